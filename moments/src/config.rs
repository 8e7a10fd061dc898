//! The one typed configuration: `--config PATH` (default `./moments.toml`, optional), then
//! `MOMENTS_*` environment variables, with defaults that run on a bare machine. Each crate owns
//! its section's type; this struct only puts them together.

use std::path::{Path, PathBuf};

use common::config::{EnvVar, Kind};
use serde::Deserialize;

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `moments=debug,info` (`RUST_LOG` wins when set).
    pub filter: Option<String>,
}

/// `[web]` section: the page at `GET /`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Where `deploy/install-web.sh` installed the page's npm packages (hls.js,
    /// tus-js-client). Default: `moments/web/node_modules` of the source tree this binary was
    /// built from.
    pub node_modules: PathBuf,
    /// Serve `POST /ui/dev-token` (tokens for any user, signed with the development key) — only
    /// ever while no `auth.public_key` is configured.
    pub dev_tokens: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            node_modules: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/web/node_modules")),
            dev_tokens: true,
        }
    }
}

/// Everything `moments` can be configured with.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the embedded database, local objects, keys and certificates live.
    pub data_dir: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// HTTP/1.1 + HTTP/2 listener.
    pub http: common::server::HttpConfig,
    /// HTTP/3 (QUIC) listener.
    pub quic: common::server::QuicConfig,
    /// Metadata database.
    pub database: common::db::Config,
    /// Object storage.
    pub storage: common::store::Config,
    /// Token verification.
    pub auth: common::auth::Config,
    /// The durable job queue.
    pub queue: common::queue::Config,
    /// Resumable uploads.
    pub ingest: ingest::Config,
    /// Transcoding.
    pub transcode: transcode::Config,
    /// HLS packaging and publishing.
    pub packager: packager::Config,
    /// Voice Q&A.
    pub voice: asr_tts::Config,
    /// The web page.
    pub web: WebConfig,
    /// Events for the rest of the app: webhooks and the message bus.
    pub events: common::events::Config,
    /// Per-user rate limits (in this process, or in Redis across nodes).
    pub limits: common::limit::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            log: LogConfig::default(),
            http: Default::default(),
            quic: Default::default(),
            database: Default::default(),
            storage: Default::default(),
            auth: Default::default(),
            queue: Default::default(),
            ingest: Default::default(),
            transcode: Default::default(),
            packager: Default::default(),
            voice: Default::default(),
            web: Default::default(),
            events: Default::default(),
            limits: Default::default(),
        }
    }
}

/// The environment variables and the keys they set.
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: "MOMENTS_DATA_DIR",
        key: "data_dir",
        kind: Kind::Str,
        help: "data directory (default ./data)",
    },
    EnvVar {
        name: "MOMENTS_HTTP_ADDR",
        key: "http.addr",
        kind: Kind::Str,
        help: "HTTP/1.1 + HTTP/2 listen address (default 127.0.0.1:8080)",
    },
    EnvVar {
        name: "MOMENTS_QUIC_ADDR",
        key: "quic.addr",
        kind: Kind::Str,
        help: "HTTP/3 (QUIC, UDP) listen address (default 127.0.0.1:4433)",
    },
    EnvVar {
        name: "MOMENTS_QUIC_CONGESTION",
        key: "quic.congestion",
        kind: Kind::Str,
        help: "QUIC congestion controller: bbr, cubic or newreno (server and moments upload)",
    },
    EnvVar {
        name: "MOMENTS_DATABASE_URL",
        key: "database.url",
        kind: Kind::Str,
        help: "sqlite://PATH or postgres://… (default sqlite://$DATA/moments.db)",
    },
    EnvVar {
        name: "MOMENTS_STORAGE",
        key: "storage.url",
        kind: Kind::Str,
        help: "file://DIR or s3://BUCKET/PREFIX (default file://$DATA/objects)",
    },
    EnvVar {
        name: "MOMENTS_S3_ENDPOINT",
        key: "storage.s3_endpoint",
        kind: Kind::Str,
        help: "S3 endpoint URL for MinIO/R2/… (credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION)",
    },
    EnvVar {
        name: "MOMENTS_AUTH_PUBLIC_KEY",
        key: "auth.public_key",
        kind: Kind::Str,
        help: "PEM Ed25519 public key that verifies tokens (default: the dev key under $DATA/keys)",
    },
    EnvVar {
        name: "MOMENTS_PUBLIC_BASE_URL",
        key: "packager.public_base_url",
        kind: Kind::Str,
        help: "base URL players fetch published HLS from (CDN/bucket); unset: the built-in origin",
    },
    EnvVar {
        name: "MOMENTS_X264_PRESET",
        key: "transcode.x264_preset",
        kind: Kind::Str,
        help: "libx264 preset (default veryfast)",
    },
    EnvVar {
        name: "MOMENTS_TRANSCODE_WORKERS",
        key: "transcode.workers",
        kind: Kind::Int,
        help: "transcode jobs run at once per process (default 1)",
    },
    EnvVar {
        name: "MOMENTS_SIGNED_PLAYBACK",
        key: "packager.signed_playback",
        kind: Kind::Bool,
        help: "playlists and segments need a token from POST /v1/moments/{id}/playback (default false)",
    },
    EnvVar {
        name: "MOMENTS_PLAYBACK_SECRET",
        key: "packager.playback_secret",
        kind: Kind::Str,
        help: "the key every node signs playback tokens with, at least 16 bytes (default: $DATA/keys/playback.key)",
    },
    EnvVar {
        name: "MOMENTS_CAPTIONS",
        key: "transcode.captions",
        kind: Kind::Bool,
        help: "make captions (WebVTT subtitles) from each moment's speech after it is ready (default true)",
    },
    EnvVar {
        name: "MOMENTS_TRANSCODE_STREAMING",
        key: "transcode.streaming",
        kind: Kind::Bool,
        help: "transcode uploads while they arrive when a worker is idle (default true)",
    },
    EnvVar {
        name: "MOMENTS_LLM_URL",
        key: "voice.llm_url",
        kind: Kind::Str,
        help: "OpenAI-compatible base URL (e.g. https://api.deepseek.com/v1); unset: the local question writer",
    },
    EnvVar {
        name: "MOMENTS_LLM_MODEL",
        key: "voice.llm_model",
        kind: Kind::Str,
        help: "LLM model name (default deepseek-chat)",
    },
    EnvVar {
        name: "MOMENTS_LLM_API_KEY",
        key: "voice.llm_api_key",
        kind: Kind::Str,
        help: "LLM API key (sent as a bearer token)",
    },
    EnvVar {
        name: "MOMENTS_TTS_ENGINE",
        key: "voice.tts_engine",
        kind: Kind::Str,
        help: "auto (Piper when installed, else espeak-ng), piper or espeak-ng",
    },
    EnvVar {
        name: "MOMENTS_ASR_ENGINE",
        key: "voice.asr_engine",
        kind: Kind::Str,
        help: "auto (Whisper when installed, else pocketsphinx), whisper or pocketsphinx",
    },
    EnvVar {
        name: "MOMENTS_MODELS_DIR",
        key: "voice.models_dir",
        kind: Kind::Str,
        help: "where deploy/install-models.sh put the neural voice models (default $DATA/models)",
    },
    EnvVar {
        name: "MOMENTS_WEB_MODULES",
        key: "web.node_modules",
        kind: Kind::Str,
        help: "the web page's npm packages (default: moments/web/node_modules of the build's source tree)",
    },
    EnvVar {
        name: "MOMENTS_EVENTS_URL",
        key: "events.url",
        kind: Kind::Str,
        help: "message bus for events: nats://HOST:PORT (NATS JetStream); unset: no bus",
    },
    EnvVar {
        name: "MOMENTS_REDIS_URL",
        key: "limits.redis_url",
        kind: Kind::Str,
        help: "Redis holding the per-user rate limits for every node (redis://HOST:6379); unset: per process",
    },
    EnvVar {
        name: "MOMENTS_LOG_FORMAT",
        key: "log.format",
        kind: Kind::Str,
        help: "text or json (default text)",
    },
];

impl Config {
    /// Loads from `path` (explicit: must exist; `None`: `./moments.toml` if present) and the
    /// process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, common::config::Error> {
        Self::load_from(path, std::env::vars())
    }

    /// As [`Config::load`] with an explicit environment (tests).
    pub fn load_from(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, common::config::Error> {
        let default = Path::new("moments.toml");
        let (file, required) = match path {
            Some(p) => (p, true),
            None => (default, false),
        };
        common::config::load(Some(file), required, ENV, vars)
    }

    /// The database URL with the data-dir default applied.
    pub fn database_url(&self) -> String {
        self.database.url_or_default(&self.data_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_run_on_a_bare_machine() {
        let c = Config::load_from(Some(Path::new("/dev/null")), env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.quic.addr.to_string(), "127.0.0.1:4433");
        assert_eq!(c.database_url(), "sqlite://./data/moments.db");
        assert_eq!(
            c.storage.url_or_default(&c.data_dir),
            "file://./data/objects"
        );
    }

    #[test]
    fn the_readme_sample_file_is_every_key_at_its_default() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("A complete file with every key at its default")
            .expect("the README has its sample config");
        let block = &readme[start..];
        let body = block
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("\n```").next())
            .expect("a toml block");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("moments.toml");
        std::fs::write(&file, body).unwrap();
        let c = Config::load_from(Some(&file), env(&[])).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn environment_table_matches_the_design() {
        let c = Config::load_from(
            Some(Path::new("/dev/null")),
            env(&[
                ("MOMENTS_DATA_DIR", "/srv/m"),
                ("MOMENTS_HTTP_ADDR", "0.0.0.0:80"),
                ("MOMENTS_QUIC_ADDR", "0.0.0.0:443"),
                ("MOMENTS_DATABASE_URL", "postgres://db/m"),
                ("MOMENTS_STORAGE", "s3://bucket/p"),
                ("MOMENTS_S3_ENDPOINT", "http://minio:9000"),
                ("MOMENTS_LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/m"));
        assert_eq!(c.http.addr.port(), 80);
        assert_eq!(c.quic.addr.port(), 443);
        assert_eq!(c.database_url(), "postgres://db/m");
        assert_eq!(c.storage.url.as_deref(), Some("s3://bucket/p"));
        assert_eq!(c.storage.s3_endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(c.log.format, LogFormat::Json);
        // the data-dir default follows MOMENTS_DATA_DIR
        let c = Config::load_from(
            Some(Path::new("/dev/null")),
            env(&[("MOMENTS_DATA_DIR", "/x")]),
        )
        .unwrap();
        assert_eq!(c.database_url(), "sqlite:///x/moments.db");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(&p, "[storage]\nurll = \"file:///x\"\n").unwrap();
        let err = Config::load_from(Some(&p), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("urll"), "{err}");
        std::fs::write(&p, "colour = \"red\"\n").unwrap();
        let err = Config::load_from(Some(&p), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn malformed_values_name_their_key() {
        let err = Config::load_from(
            Some(Path::new("/dev/null")),
            env(&[("MOMENTS_LOG_FORMAT", "xml")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("log.format") && err.contains("MOMENTS_LOG_FORMAT"),
            "{err}"
        );
        let err = Config::load_from(
            Some(Path::new("/dev/null")),
            env(&[("MOMENTS_QUIC_ADDR", "localhost")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("quic.addr"), "{err}");
    }

    #[test]
    fn explicit_config_file_must_exist() {
        let err = Config::load_from(Some(Path::new("/nonexistent/moments.toml")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/moments.toml"), "{err}");
    }
}
