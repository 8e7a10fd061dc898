//! The real Prometheus (Debian's `prometheus` package) scrapes a running `moments serve` every
//! second while a moment is uploaded and transcoded; then the alert rules of
//! `deploy/prometheus/alerts.yml` evaluate without error on the live data and every query of
//! the Grafana dashboard (`deploy/grafana/dashboards/moments.json`, through
//! `deploy/prometheus/check-dashboard.py`) returns a series.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::db::Db;
use serde_json::Value;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

struct Prometheus {
    child: Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port) every second as job `api`.
    fn start(dir: &Path, target: &str) -> Prometheus {
        let alerts = Path::new(REPO).join("deploy/prometheus/alerts.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: api\n    static_configs:\n      - targets: ['{target}']\n",
                alerts.canonicalize().unwrap().display()
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", common::testing::free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect(
                "prometheus is not installed: run deploy/install-deps.sh (Debian's prometheus)",
            );
        Prometheus {
            child,
            base: format!("http://{addr}"),
        }
    }

    /// An instant query's result vector.
    async fn query(&self, q: &str) -> Vec<Value> {
        let url =
            reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.base), [("query", q)])
                .unwrap();
        let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "success", "{q}: {body}");
        body["data"]["result"].as_array().unwrap().clone()
    }

    /// The single value of `q`, if it has one series.
    async fn value(&self, q: &str) -> Option<f64> {
        let r = self.query(q).await;
        r.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Like [`Prometheus::value`], but `None` while Prometheus is not answering yet.
    async fn try_value(&self, q: &str) -> Option<f64> {
        let url =
            reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.base), [("query", q)])
                .unwrap();
        let body: Value = reqwest::get(url).await.ok()?.json().await.ok()?;
        body["data"]["result"].as_array()?.first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    async fn wait_until(&self, what: &str, q: &str, ok: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(v)) =
                tokio::time::timeout(Duration::from_secs(5), self.try_value(q)).await
                && ok(v)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never saw {what} ({q})"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_serve_and_every_dashboard_query_returns_a_series() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("m.db").display());
    let db = Db::connect(&db_url, 2).await.unwrap();
    let store = common::store::open(&Default::default(), &srv.join("data"))
        .await
        .unwrap();
    let env = [("MOMENTS_DATABASE_URL", db_url.clone())];
    let s = support::spawn(&srv, "", &env, store, db.clone()).await;
    let target = s.base.trim_start_matches("http://").to_string();

    let p = Prometheus::start(dir.path(), &target);
    p.wait_until("the node up", "up{job=\"api\"}", |v| v == 1.0)
        .await;

    // the work the dashboard shows, while Prometheus scrapes
    let clip = support::faststart_clip(dir.path(), "clip.mp4", 320, 240, 2, 300);
    let data = std::fs::read(&clip).unwrap();
    let moment = s.whole(&data).await;
    let m = s.settle(&moment, Duration::from_secs(120)).await;
    assert_eq!(m["state"], "ready", "{m}");
    // a request that fails, so the error panels have something to show
    let r = s
        .http
        .get(format!("{}/v1/moments/{moment}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    p.wait_until(
        "the completed upload",
        "sum(moments_uploads_completed_total)",
        |v| v == 1.0,
    )
    .await;
    p.wait_until(
        "the finished transcode",
        "sum(moments_transcode_ready_total)",
        |v| v == 1.0,
    )
    .await;
    p.wait_until(
        "the upload's bytes",
        "sum(moments_upload_bytes_total)",
        |v| v == data.len() as f64,
    )
    .await;
    // two more scrapes after the last change, so every rate over 1m has two samples
    let scrapes = "count_over_time(up{job=\"api\"}[1m])";
    let now = p.value(scrapes).await.unwrap();
    p.wait_until("two more scrapes", scrapes, |v| v >= now + 2.0)
        .await;

    let out = Command::new("python3")
        .arg(Path::new(REPO).join("deploy/prometheus/check-dashboard.py"))
        .arg(&p.base)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(out.status.success(), "dashboard queries: {report}");

    // the alert rules load and evaluate on the live series
    let rules: Value = reqwest::get(format!("{}/api/v1/rules", p.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert!(!groups.is_empty(), "no rule group loaded: {rules}");
    let mut n = 0;
    for g in groups {
        for r in g["rules"].as_array().unwrap() {
            n += 1;
            assert_eq!(r["health"], "ok", "rule {}: {r}", r["name"]);
        }
    }
    assert!(n >= 5, "only {n} rules loaded");
    // nothing is wrong, so no alert fires
    let firing: Vec<Value> = p.query("ALERTS{alertstate=\"firing\"}").await;
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy node: {firing:?}"
    );
    drop(s);
    db.close().await;
}
