//! The `CONSULTA_*` environment over the configuration: which variables there are (one per key,
//! `CONSULTA_SECTION_KEY`), and how their text is typed like the key's default (lists are
//! comma-separated) and laid over the TOML tree before it is parsed.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::Config;

/// Sections whose keys the environment may set, and the top-level keys.
const SECTIONS: &[&str] = &[
    "http",
    "media",
    "auth",
    "log",
    "metrics",
    "turn",
    "database",
    "api",
    "webhooks",
    "consultation",
    "recording",
    "s3",
    "cluster",
];
const TOP_LEVEL: &[&str] = &["data_dir"];
/// Environment variables that are not config keys.
const NOT_KEYS: &[&str] = &["CONSULTA_CONFIG", "CONSULTA_BIN"];

impl Config {
    /// Every environment variable the config reads, for the docs and `config check --env`.
    pub fn env_names() -> Vec<String> {
        let value = toml::Value::try_from(Config::default()).expect("defaults serialize");
        let mut names = Vec::new();
        for key in TOP_LEVEL {
            names.push(format!("CONSULTA_{}", key.to_uppercase()));
        }
        for section in SECTIONS {
            let mut keys: Vec<String> = value
                .get(section)
                .and_then(|t| t.as_table())
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default();
            // Optional keys are absent from the serialized defaults.
            keys.extend(optional_keys(section).iter().map(|k| k.to_string()));
            keys.sort();
            keys.dedup();
            for k in keys {
                names.push(format!(
                    "CONSULTA_{}_{}",
                    section.to_uppercase(),
                    k.to_uppercase()
                ));
            }
        }
        names
    }
}

fn optional_keys(section: &str) -> &'static [&'static str] {
    match section {
        "http" => &["public_url"],
        "api" => &["listen"],
        "media" => &["bind_ip"],
        "auth" => &["token_secret"],
        "metrics" => &["listen"],
        "turn" => &["tls_cert", "tls_key", "relay_ip", "relay_public_ip", "host"],
        "database" => &["url"],
        "webhooks" => &["secret"],
        "recording" => &["spool_dir", "encryption_key"],
        "s3" => &["endpoint", "bucket", "access_key_id", "secret_access_key"],
        _ => &[],
    }
}

/// Overlays `CONSULTA_*` variables onto the TOML tree, typed like the defaults.
pub(super) fn apply_env(
    value: &mut toml::Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<()> {
    let defaults = toml::Value::try_from(Config::default()).expect("defaults serialize");
    let table = value
        .as_table_mut()
        .context("the config file must be a TOML table")?;
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("CONSULTA_"))
        .collect();
    for (name, raw) in vars {
        if NOT_KEYS.contains(&name.as_str()) {
            continue;
        }
        let rest = name["CONSULTA_".len()..].to_lowercase();
        if TOP_LEVEL.contains(&rest.as_str()) {
            let typed = typed_env_value(defaults.get(&rest), &raw, &name)?;
            table.insert(rest, typed);
            continue;
        }
        let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            continue; // not ours (e.g. a test harness variable)
        };
        let key = rest[section.len() + 1..].to_owned();
        let default = defaults.get(section).and_then(|s| s.get(&key));
        let typed = typed_env_value(default, &raw, &name)?;
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        let sect = entry
            .as_table_mut()
            .with_context(|| format!("[{section}] must be a table"))?;
        sect.insert(key, typed);
    }
    Ok(())
}

fn typed_env_value(default: Option<&toml::Value>, raw: &str, name: &str) -> Result<toml::Value> {
    Ok(match default {
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.into()))
                .collect(),
        ),
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            raw.trim()
                .parse()
                .with_context(|| format!("{name} must be a whole number, got {raw:?}"))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
            raw.trim()
                .parse()
                .with_context(|| format!("{name} must be true or false, got {raw:?}"))?,
        ),
        _ => toml::Value::String(raw.to_owned()),
    })
}
