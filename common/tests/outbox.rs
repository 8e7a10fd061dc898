//! The outbox on SQLite and PostgreSQL: fan-out to the targets that want each type, one head
//! per subject in `seq` order whatever the fan-out clocks said, backoff, dead letters, replay,
//! disabled endpoints and pruning.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use common::db::Db;
use common::events::{self, Endpoint, Payload, outbox, webhook::Secret};

fn failed(moment: &str, n: u32) -> Payload {
    Payload::MomentFailed(events::MomentFailed {
        moment_id: moment.into(),
        user_id: "u".into(),
        reason: format!("r{n}"),
    })
}

async fn emit(db: &Db, p: Payload) -> events::Event {
    let mut tx = db.pool().begin().await.unwrap();
    let e = events::emit_on(&mut tx, p).await.unwrap();
    tx.commit().await.unwrap();
    e
}

fn config() -> events::Config {
    let ep = |name: &str, types: &[&str]| Endpoint {
        name: name.into(),
        url: format!("http://127.0.0.1:9/{name}"),
        secrets: vec![Secret::generate().encoded()],
        types: types.iter().map(|t| t.to_string()).collect(),
    };
    events::Config {
        webhooks: vec![ep("all", &[]), ep("profiles", &["profile.*"])],
        max_attempts: 2,
        backoff_base_ms: 60_000,
        ..events::Config::default()
    }
}

fn ids(d: &[outbox::Due]) -> Vec<String> {
    d.iter().map(|d| d.event_id.clone()).collect()
}

#[tokio::test]
async fn heads_go_in_seq_order_with_backoff_dead_letters_and_replay() {
    common::testing::on_both(|db| async move {
        let c = config();
        let a: Vec<_> = [
            emit(&db, failed("a", 1)).await,
            emit(&db, failed("a", 2)).await,
            emit(&db, failed("a", 3)).await,
        ]
        .into();
        let b = emit(&db, failed("b", 1)).await;
        assert_eq!((a[0].seq, a[2].seq, b.seq), (1, 3, 1));
        assert_eq!(outbox::fan_out(&db, &c, 500).await.unwrap(), 4);
        assert_eq!(outbox::fan_out(&db, &c, 500).await.unwrap(), 0);
        // the profiles endpoint wanted none of them
        assert!(
            outbox::due(&db, "webhook:profiles", 10)
                .await
                .unwrap()
                .is_empty()
        );

        // a node whose clock is behind fanned out a's third event "earlier"
        sqlx::query("UPDATE event_deliveries SET created_at = 0 WHERE event_id = $1")
            .bind(&a[2].id)
            .execute(db.pool())
            .await
            .unwrap();
        let due = outbox::due(&db, "webhook:all", 10).await.unwrap();
        let mut got = ids(&due);
        got.sort();
        let mut want = vec![a[0].id.clone(), b.id.clone()];
        want.sort();
        assert_eq!(got, want, "one head per subject, the lowest seq");

        // a's head fails: in backoff it holds a's chain; b goes on
        let head = due.iter().find(|d| d.event_id == a[0].id).unwrap();
        assert!(
            !outbox::failed(&db, &c, head, "webhook:all", "500")
                .await
                .unwrap()
        );
        outbox::delivered(&db, "webhook:all", std::slice::from_ref(&b.id))
            .await
            .unwrap();
        assert!(
            outbox::due(&db, "webhook:all", 10)
                .await
                .unwrap()
                .is_empty()
        );

        // its last attempt dead-letters it; the chain goes on without it
        let mut again = head.clone();
        again.attempts = 1;
        assert!(
            outbox::failed(&db, &c, &again, "webhook:all", "500 again")
                .await
                .unwrap()
        );
        assert_eq!(
            ids(&outbox::due(&db, "webhook:all", 10).await.unwrap()),
            vec![a[1].id.clone()]
        );
        let dead = outbox::dead(&db, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].event["seq"], 1);
        assert_eq!(dead[0].last_error.as_deref(), Some("500 again"));

        // replayed, it is the head again
        assert_eq!(
            outbox::replay(&db, &a[0].id, Some("webhook:all"))
                .await
                .unwrap(),
            1
        );
        assert_eq!(outbox::replay(&db, &a[0].id, None).await.unwrap(), 0);
        assert_eq!(
            ids(&outbox::due(&db, "webhook:all", 10).await.unwrap()),
            vec![a[0].id.clone()]
        );
        for e in &a {
            outbox::delivered(&db, "webhook:all", std::slice::from_ref(&e.id))
                .await
                .unwrap();
        }
        let st = outbox::stats(&db).await.unwrap();
        assert!(st.pending.is_empty() && st.dead.is_empty(), "{st:?}");

        // 410: disabled until enabled, nothing dropped
        outbox::disable(&db, "all", "answered 410 Gone")
            .await
            .unwrap();
        assert!(outbox::disabled(&db, "all").await.unwrap().is_some());
        assert!(outbox::enable(&db, "all").await.unwrap());
        assert!(!outbox::enable(&db, "all").await.unwrap());
        assert!(outbox::disabled(&db, "all").await.unwrap().is_none());

        // delivered events go after their retention; a pending one stays
        let p = emit(
            &db,
            Payload::ProfileUpdated(events::ProfileUpdated {
                user_id: "u".into(),
                summary: "s".into(),
                tags: vec![],
            }),
        )
        .await;
        outbox::fan_out(&db, &c, 500).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(outbox::prune(&db, Duration::ZERO).await.unwrap(), 4);
        let left: Vec<String> = sqlx::query_scalar("SELECT id FROM events")
            .fetch_all(db.pool())
            .await
            .unwrap();
        assert_eq!(left, vec![p.id]);
    })
    .await;
}
