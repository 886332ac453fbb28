//! Tests of the configuration (`src/config.rs`): defaults, file and environment, validation.
use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_laptop_safe() {
    // A section present but partial keeps the other keys' defaults.
    let dir = std::env::temp_dir().join(format!("consulta-partial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("c.toml"),
        "[webhooks]\nurls = []\n[consultation]\nno_show_after = 60\n",
    )
    .unwrap();
    let partial = Config::load(Some(&dir.join("c.toml")), env(&[])).unwrap();
    assert_eq!(partial.webhooks.max_age, 3 * 86_400);
    assert_eq!(partial.consultation.empty_room_end, 300);
    std::fs::remove_dir_all(&dir).unwrap();
    let c = Config::load(None, env(&[])).unwrap();
    c.validate().unwrap();
    assert_eq!(c.http.listen.to_string(), "127.0.0.1:7880");
    assert_eq!(c.media.udp_port, 7882);
    assert_eq!(c.bind_ip().to_string(), "127.0.0.1");
    assert_eq!(c.media.max_publishers, 5);
    assert_eq!(c.media.nack_history, 500);
    assert_eq!(c.media.batch_window_us, 1000);
    assert_eq!(c.data_dir, PathBuf::from("./data"));
}

#[test]
fn file_then_env_override() {
    let dir = std::env::temp_dir().join(format!("consulta-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        "data_dir = \"/tmp/x\"\n[http]\nlisten = \"0.0.0.0:8000\"\n[media]\nudp_port = 9000\npublic_ips = [\"203.0.113.5\"]\nworkers = 3\n[auth]\ntoken_secret = \"0123456789abcdef\"\n",
    )
    .unwrap();
    let c = Config::load(
        Some(&file),
        env(&[
            ("CONSULTA_MEDIA_UDP_PORT", "9100"),
            ("CONSULTA_MEDIA_PUBLIC_IPS", "198.51.100.1, 10.0.0.2"),
            ("CONSULTA_BIN", "x"),
        ]),
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.media.udp_port, 9100);
    assert_eq!(c.media.workers, 3);
    assert_eq!(c.media.public_ips.len(), 2);
    assert_eq!(c.bind_ip().to_string(), "0.0.0.0");
    assert_eq!(c.http.listen.port(), 8000);
    assert!(!c.redacted_toml().contains("0123456789abcdef"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn typos_and_bad_values_are_errors() {
    assert!(Config::load(None, env(&[("CONSULTA_MEDIA_UDPPORT", "1")])).is_err());
    assert!(Config::load(None, env(&[("CONSULTA_MEDIA_UDP_PORT", "seven")])).is_err());
    assert!(Config::load(None, env(&[("CONSULTA_HTTP_LISTEN", "nowhere")])).is_err());
    let c = Config::load(None, env(&[("CONSULTA_AUTH_TOKEN_SECRET", "short")])).unwrap();
    assert!(c.validate().is_err());
    let c = Config::load(None, env(&[("CONSULTA_MEDIA_PUBLIC_IPS", "0.0.0.0")])).unwrap();
    assert!(c.validate().is_err());
    for bad in ["100000", "5"] {
        let c = Config::load(None, env(&[("CONSULTA_MEDIA_NACK_HISTORY", bad)])).unwrap();
        assert!(c.validate().is_err());
    }
    let c = Config::load(None, env(&[("CONSULTA_MEDIA_NACK_HISTORY", "0")])).unwrap();
    assert_eq!(c.media.nack_history, 0);
    c.validate().unwrap();
    let c = Config::load(None, env(&[("CONSULTA_MEDIA_BATCH_WINDOW_US", "5001")])).unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.starts_with("media.batch_window_us must be"), "{e}");
    for ok in ["0", "5000"] {
        let c = Config::load(None, env(&[("CONSULTA_MEDIA_BATCH_WINDOW_US", ok)])).unwrap();
        c.validate().unwrap();
    }
    for bad in ["one", "3-1", "1,1", "4096"] {
        let c = Config::load(None, env(&[("CONSULTA_MEDIA_WORKER_CPUS", bad)])).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("media.worker_cpus: "), "{bad}: {e}");
    }
    let c = Config::load(None, env(&[("CONSULTA_MEDIA_WORKER_CPUS", "1,2-3")])).unwrap();
    c.validate().unwrap();
    assert_eq!(c.worker_cpus().unwrap(), vec![1, 2, 3]);
    assert_eq!(
        Config::default().worker_cpus().unwrap(),
        Vec::<usize>::new()
    );
}

#[test]
fn every_env_name_is_accepted() {
    for name in Config::env_names() {
        let value = match name.as_str() {
            "CONSULTA_HTTP_LISTEN" | "CONSULTA_METRICS_LISTEN" | "CONSULTA_API_LISTEN" => {
                "127.0.0.1:1"
            }
            "CONSULTA_MEDIA_PUBLIC_IPS"
            | "CONSULTA_MEDIA_BIND_IP"
            | "CONSULTA_TURN_LISTEN_IP"
            | "CONSULTA_TURN_RELAY_IP"
            | "CONSULTA_TURN_RELAY_PUBLIC_IP" => "127.0.0.1",
            "CONSULTA_TURN_ENABLED"
            | "CONSULTA_MEDIA_BANDWIDTH_ESTIMATION"
            | "CONSULTA_MEDIA_LIP_SYNC"
            | "CONSULTA_TURN_LEGACY_CHANNEL_NUMBERS"
            | "CONSULTA_S3_PATH_STYLE"
            | "CONSULTA_WEBHOOKS_ALLOW_HTTP" => "true",
            "CONSULTA_TURN_ALLOWED_PEER_RANGES" => "10.0.0.0/8,192.168.0.0/16",
            "CONSULTA_DATABASE_URL" => "postgres://u:p@127.0.0.1/test",
            "CONSULTA_WEBHOOKS_URLS" => "",
            "CONSULTA_API_KEYS" | "CONSULTA_WEBHOOKS_SECRET" => "something-long-enough",
            "CONSULTA_TURN_REALM"
            | "CONSULTA_TURN_HOST"
            | "CONSULTA_TURN_TLS_CERT"
            | "CONSULTA_TURN_TLS_KEY"
            | "CONSULTA_TURN_SECRETS" => "something-long-enough",
            "CONSULTA_LOG_FORMAT" => "json",
            "CONSULTA_LOG_LEVEL" => "debug",
            "CONSULTA_AUTH_TOKEN_SECRET" | "CONSULTA_DATA_DIR" => "0123456789abcdef",
            _ => "2",
        };
        Config::load(None, env(&[(&name, value)])).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
}

#[test]
fn generated_secret_is_kept() {
    let dir = std::env::temp_dir().join(format!("consulta-secret-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let c = Config {
        data_dir: dir.clone(),
        ..Config::default()
    };
    let a = c.token_secret().unwrap();
    let b = c.token_secret().unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 64);
    std::fs::remove_dir_all(&dir).unwrap();
}
