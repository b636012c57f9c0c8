//! The appservice registration file the homeserver loads, generated from the config, and the
//! token write-back that keeps `config.toml` and `registration.yaml` in agreement.

use std::path::Path;

use ruma::api::appservice::{Namespace, Namespaces, Registration, RegistrationInit};

use crate::config::{Config, is_placeholder};

/// Errors of `generate-registration`.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The config file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The config file cannot be edited (it does not parse as TOML).
    #[error("cannot edit {path}: {problem}")]
    Edit {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Builds the registration for `config` (tokens must already be real).
pub fn build(config: &Config) -> Registration {
    let server = regex_escape(config.homeserver.server_name.as_str());
    let prefix = regex_escape(&config.appservice.agent_prefix);
    let bot = regex_escape(&config.appservice.bot_localpart);
    let mut namespaces = Namespaces::new();
    namespaces.users = vec![
        Namespace::new(true, format!("^@{prefix}.*:{server}$")),
        Namespace::new(true, format!("^@{bot}:{server}$")),
    ];
    let mut registration: Registration = RegistrationInit {
        id: config.appservice.id.clone(),
        url: Some(config.appservice.url.clone()),
        as_token: config.appservice.as_token.clone(),
        hs_token: config.appservice.hs_token.clone(),
        sender_localpart: config.appservice.bot_localpart.clone(),
        namespaces,
        rate_limited: Some(false),
        protocols: None,
    }
    .into();
    registration.receive_ephemeral = true;
    registration
}

/// Serializes the registration as YAML.
pub fn to_yaml(registration: &Registration) -> String {
    let mut value = serde_yaml::to_value(registration).expect("registration serializes");
    // Spell out the empty alias and room namespaces: some homeservers expect the keys.
    if let Some(ns) = value.get_mut("namespaces").and_then(|n| n.as_mapping_mut()) {
        for key in ["users", "aliases", "rooms"] {
            ns.entry(key.into())
                .or_insert_with(|| serde_yaml::Value::Sequence(Vec::new()));
        }
    }
    // End-to-end encryption of the agents: ephemeral and to-device events in transactions
    // (MSC2409; older Synapse reads only the unstable key), device lists and one-time key
    // counts (MSC3202), and devices the appservice creates itself (MSC4190).
    if let Some(map) = value.as_mapping_mut() {
        for key in [
            "de.sorunome.msc2409.push_ephemeral",
            "org.matrix.msc3202",
            "io.element.msc4190",
        ] {
            map.insert(key.into(), true.into());
        }
    }
    serde_yaml::to_string(&value).expect("registration serializes")
}

/// Escapes regex metacharacters (dots in server names above all).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A strong random token: 64 characters of `[A-Za-z0-9]` (~380 bits).
pub fn random_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 64];
    getrandom::fill(&mut bytes).expect("OS random source");
    // 256 % 62 != 0: reject the biased tail so every character is uniform.
    let mut out = String::with_capacity(64);
    let mut pool = bytes.to_vec();
    while out.len() < 64 {
        if pool.is_empty() {
            pool = vec![0u8; 64];
            getrandom::fill(&mut pool).expect("OS random source");
        }
        let b = pool.pop().expect("non-empty");
        if (b as usize) < 248 {
            out.push(ALPHABET[(b as usize) % 62] as char);
        }
    }
    out
}

/// Outcome of [`generate`].
#[derive(Debug)]
pub struct Generated {
    /// The registration written.
    pub registration: Registration,
    /// Whether new tokens were written back into the config file.
    pub tokens_written: bool,
}

/// Fills placeholder tokens in the config file (keeping comments and layout), then writes the
/// registration. Existing real tokens are kept, so running it twice changes nothing.
pub fn generate(config_path: &Path, out: &Path) -> Result<Generated, RegistrationError> {
    let mut config = Config::load_unvalidated(config_path)?;
    config.validate_rest()?;
    let mut tokens_written = false;
    if is_placeholder(&config.appservice.as_token) || is_placeholder(&config.appservice.hs_token) {
        let text =
            std::fs::read_to_string(config_path).map_err(|source| RegistrationError::Read {
                path: config_path.display().to_string(),
                source,
            })?;
        let mut doc: toml_edit::DocumentMut =
            text.parse()
                .map_err(|e: toml_edit::TomlError| RegistrationError::Edit {
                    path: config_path.display().to_string(),
                    problem: e.to_string(),
                })?;
        let section = doc
            .get_mut("appservice")
            .and_then(|s| s.as_table_like_mut())
            .ok_or_else(|| RegistrationError::Edit {
                path: config_path.display().to_string(),
                problem: "no [appservice] table".into(),
            })?;
        for key in ["as_token", "hs_token"] {
            let current = section.get(key).and_then(|v| v.as_str()).unwrap_or("");
            if is_placeholder(current) {
                let token = random_token();
                match section.get_mut(key).and_then(|i| i.as_value_mut()) {
                    // Keep the line's trailing comment: replace only the value.
                    Some(value) => {
                        let decor = value.decor().clone();
                        *value = toml_edit::Value::from(token.clone());
                        *value.decor_mut() = decor;
                    }
                    None => {
                        section.insert(key, toml_edit::value(token.clone()));
                    }
                }
                if key == "as_token" {
                    config.appservice.as_token = token;
                } else {
                    config.appservice.hs_token = token;
                }
            }
        }
        std::fs::write(config_path, doc.to_string()).map_err(|source| {
            RegistrationError::Write {
                path: config_path.display().to_string(),
                source,
            }
        })?;
        tokens_written = true;
    }
    config.validate()?;
    let registration = build(&config);
    let yaml = format!(
        "# Generated by `daarion-bridge generate-registration` from {}.\n# Give this file to the homeserver (Synapse: app_service_config_files).\n{}",
        config_path.display(),
        to_yaml(&registration)
    );
    std::fs::write(out, yaml).map_err(|source| RegistrationError::Write {
        path: out.display().to_string(),
        source,
    })?;
    Ok(Generated {
        registration,
        tokens_written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_dots_and_anchors() {
        assert_eq!(regex_escape("matrix.example.org"), "matrix\\.example\\.org");
    }

    #[test]
    fn tokens_are_long_distinct_and_alphanumeric() {
        let a = random_token();
        let b = random_token();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}

#[cfg(test)]
mod generate_tests {
    use super::*;

    #[test]
    fn generate_fills_placeholders_once_and_keeps_comments() {
        let dir =
            std::env::temp_dir().join(format!("daarion-reg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        let out = dir.join("registration.yaml");
        std::fs::write(
            &config,
            "[homeserver]\nurl = \"http://127.0.0.1:8008\"\nserver_name = \"matrix.example.org\"\n\n\
             [appservice]\nid = \"daarion\"\nlisten = \"127.0.0.1:29333\"\nurl = \"http://127.0.0.1:29333\"\n\
             # the token we send\nas_token = \"CHANGE_ME\" # keep me\nhs_token = \"CHANGE_ME\"\n",
        )
        .unwrap();
        let first = generate(&config, &out).unwrap();
        assert!(first.tokens_written);
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(
            text.contains("# the token we send") && text.contains("# keep me"),
            "{text}"
        );
        let loaded = Config::load(&config).unwrap();
        assert_eq!(loaded.appservice.as_token, first.registration.as_token);
        let yaml = std::fs::read_to_string(&out).unwrap();
        assert!(
            yaml.contains(r"regex: ^@agent_.*:matrix\.example\.org$"),
            "{yaml}"
        );
        assert!(yaml.contains("sender_localpart: daarion"));
        assert!(yaml.contains("aliases: []") && yaml.contains("rooms: []"));
        assert!(yaml.contains("rate_limited: false") && yaml.contains("receive_ephemeral: true"));
        for key in [
            "de.sorunome.msc2409.push_ephemeral: true",
            "org.matrix.msc3202: true",
            "io.element.msc4190: true",
        ] {
            assert!(yaml.contains(key), "{key} missing from\n{yaml}");
        }
        // Twice: the same tokens.
        let second = generate(&config, &out).unwrap();
        assert!(!second.tokens_written);
        assert_eq!(second.registration.as_token, first.registration.as_token);
        assert_eq!(second.registration.hs_token, first.registration.hs_token);
        let _ = std::fs::remove_dir_all(dir);
    }
}
