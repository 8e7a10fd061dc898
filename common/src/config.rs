//! Loading one typed configuration from an optional TOML file and `MOMENTS_*` environment
//! variables.
//!
//! The composed struct lives in the `moments` binary (it knows every section); this module only
//! knows how to merge a file with the environment and how to report what went wrong, naming the
//! key (or the variable) at fault. Every section type is `#[serde(deny_unknown_fields)]`, so a
//! typo in the file stops start-up instead of being silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// How an environment variable's text is turned into a config value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Taken as it is.
    Str,
    /// A whole number (`8080`).
    Int,
    /// A number with an optional fraction (`0.5`).
    Float,
    /// `true`/`false` (also `1`/`0`, `yes`/`no`).
    Bool,
}

/// One environment variable that overrides one config key.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    /// Variable name, e.g. `MOMENTS_HTTP_ADDR`.
    pub name: &'static str,
    /// Dotted key it sets, e.g. `http.addr`.
    pub key: &'static str,
    /// How its text is parsed.
    pub kind: Kind,
    /// One line for `--help` and the README.
    pub help: &'static str,
}

/// Environment variables with this prefix are ours; an unknown one is an error (a typo would
/// otherwise be silently ignored). Test-suite knobs use `MOMENTS_TEST_` and are exempt.
pub const ENV_PREFIX: &str = "MOMENTS_";
const ENV_EXEMPT_PREFIX: &str = "MOMENTS_TEST_";

/// What went wrong while loading the configuration. Every message names the key or variable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file named with `--config` could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A `MOMENTS_*` variable that no setting uses.
    #[error(
        "unknown environment variable {name} (known: {known}; test knobs use the MOMENTS_TEST_ prefix)"
    )]
    UnknownEnv {
        /// The variable.
        name: String,
        /// The variables we know, for the message.
        known: String,
    },
    /// A variable whose text does not parse as its kind.
    #[error("environment variable {name}={value:?} is not valid: expected {expected}")]
    BadEnv {
        /// The variable.
        name: String,
        /// Its text.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A key that is unknown or has a bad value (after merging file and environment).
    #[error("config key `{key}`{origin}: {message}")]
    Key {
        /// Dotted path of the key.
        key: String,
        /// ` (from MOMENTS_X)` when the value came from the environment, else empty.
        origin: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Reads `file` (if it exists; when `required`, a missing file is an error), applies the
/// environment variables in `vars` that `table` knows, and deserializes the result into `T`.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    required: bool,
    table: &[EnvVar],
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, Error> {
    let mut root = toml::Table::new();
    if let Some(path) = file {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                root = text.parse::<toml::Table>().map_err(|e| Error::Syntax {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
            Err(source) => {
                return Err(Error::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }

    let mut from_env: BTreeMap<&'static str, &'static str> = BTreeMap::new();
    for (name, value) in vars {
        if !name.starts_with(ENV_PREFIX) || name.starts_with(ENV_EXEMPT_PREFIX) {
            continue;
        }
        let Some(var) = table.iter().find(|v| v.name == name) else {
            let known = table.iter().map(|v| v.name).collect::<Vec<_>>().join(", ");
            return Err(Error::UnknownEnv { name, known });
        };
        let parsed = parse_env(var, &value)?;
        set_path(&mut root, var.key, parsed);
        from_env.insert(var.key, var.name);
    }

    let de = toml::Value::Table(root);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let origin = from_env
            .get(key.as_str())
            .map(|n| format!(" (from {n})"))
            .unwrap_or_default();
        let inner = e.into_inner();
        Error::Key {
            key,
            origin,
            message: inner.to_string(),
        }
    })
}

fn parse_env(var: &EnvVar, value: &str) -> Result<toml::Value, Error> {
    let bad = |expected| Error::BadEnv {
        name: var.name.to_string(),
        value: value.to_string(),
        expected,
    };
    Ok(match var.kind {
        Kind::Str => toml::Value::String(value.to_string()),
        Kind::Int => toml::Value::Integer(value.trim().parse().map_err(|_| bad("an integer"))?),
        Kind::Float => toml::Value::Float(value.trim().parse().map_err(|_| bad("a number"))?),
        Kind::Bool => toml::Value::Boolean(match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(bad("true or false")),
        }),
    })
}

fn set_path(root: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut table = root;
    for part in parts {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            // The file had a scalar where a section belongs; the environment wins, and the
            // section's own validation reports anything still wrong.
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        table = next;
    }
    table.insert(last.to_string(), value);
}

/// Renders the environment table as Markdown rows (for the README and `--help`).
pub fn env_help(table: &[EnvVar]) -> String {
    table
        .iter()
        .map(|v| format!("  {:<28} {} (key `{}`)\n", v.name, v.help, v.key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::net::SocketAddr;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Http {
        addr: SocketAddr,
        workers: u32,
        gzip: bool,
    }
    impl Default for Http {
        fn default() -> Self {
            Http {
                addr: "127.0.0.1:8080"
                    .parse()
                    .unwrap_or(SocketAddr::from(([0; 4], 0))),
                workers: 1,
                gzip: false,
            }
        }
    }
    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Root {
        name: String,
        http: Http,
    }

    const TABLE: &[EnvVar] = &[
        EnvVar {
            name: "MOMENTS_HTTP_ADDR",
            key: "http.addr",
            kind: Kind::Str,
            help: "listen address",
        },
        EnvVar {
            name: "MOMENTS_WORKERS",
            key: "http.workers",
            kind: Kind::Int,
            help: "workers",
        },
        EnvVar {
            name: "MOMENTS_GZIP",
            key: "http.gzip",
            kind: Kind::Bool,
            help: "gzip",
        },
    ];

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let root: Root = load(
            Some(Path::new("/nonexistent/moments.toml")),
            false,
            TABLE,
            [],
        )
        .unwrap();
        assert_eq!(root, Root::default());
    }

    #[test]
    fn missing_required_file_is_an_error() {
        let err =
            load::<Root>(Some(Path::new("/nonexistent/m.toml")), true, TABLE, []).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/m.toml"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let f = write("name = \"a\"\n[http]\naddr = \"127.0.0.1:1\"\nworkers = 3\n");
        let root: Root = load(
            Some(f.path()),
            true,
            TABLE,
            env(&[("MOMENTS_HTTP_ADDR", "0.0.0.0:9"), ("MOMENTS_GZIP", "yes")]),
        )
        .unwrap();
        assert_eq!(root.name, "a");
        assert_eq!(root.http.addr.port(), 9);
        assert_eq!(root.http.workers, 3);
        assert!(root.http.gzip);
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let f = write("nmae = \"a\"\n");
        let err = load::<Root>(Some(f.path()), true, TABLE, [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nmae"), "{err}");
    }

    #[test]
    fn unknown_nested_key_is_named_with_its_section() {
        let f = write("[http]\nadr = \"127.0.0.1:1\"\n");
        let err = load::<Root>(Some(f.path()), true, TABLE, [])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("http.adr") || (err.contains("http") && err.contains("adr")),
            "{err}"
        );
    }

    #[test]
    fn bad_value_in_file_names_the_key() {
        let f = write("[http]\naddr = \"not an address\"\n");
        let err = load::<Root>(Some(f.path()), true, TABLE, [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.addr"), "{err}");
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = load::<Root>(None, false, TABLE, env(&[("MOMENTS_HTTP_ADDR", "nope")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MOMENTS_HTTP_ADDR") && err.contains("http.addr"),
            "{err}"
        );
        let err = load::<Root>(None, false, TABLE, env(&[("MOMENTS_WORKERS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MOMENTS_WORKERS") && err.contains("integer"),
            "{err}"
        );
        let err = load::<Root>(None, false, TABLE, env(&[("MOMENTS_GZIP", "perhaps")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MOMENTS_GZIP"), "{err}");
    }

    #[test]
    fn unknown_env_variable_is_refused_but_test_knobs_and_others_pass() {
        let err = load::<Root>(None, false, TABLE, env(&[("MOMENTS_HTTP_ADR", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MOMENTS_HTTP_ADR"), "{err}");
        let ok: Root = load(
            None,
            false,
            TABLE,
            env(&[
                ("MOMENTS_TEST_PG", "x"),
                ("PATH", "/bin"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(ok, Root::default());
    }

    #[test]
    fn invalid_toml_reports_the_file() {
        let f = write("[http\n");
        let err = load::<Root>(Some(f.path()), true, TABLE, [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid TOML"), "{err}");
    }
}
