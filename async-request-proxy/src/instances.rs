//! The instances file (`--instances FILE`, TOML): which instance a request belongs to, and each
//! instance's callback URL, keys and share. Re-read on SIGHUP; a file that does not parse or
//! check keeps the instances as they were. An instance without keys, or a file without
//! instances, is refused unless `--unsigned-callbacks` allows unsigned callbacks.
//!
//! ```toml
//! # How a request names its instance: the `Element <token>` part of `Authorization`
//! # ("element", the default), or the value of a header of your choice.
//! match = "element"            # or: match = { header = "x-tenant-key" }
//!
//! [[instance]]
//! id = 30
//! credentials = ["acme-token"] # more than one while rotating
//! callback_url = "https://acme.example/hooks"
//! signing_key_file = "/etc/async-request-proxy/acme.key"   # or signing_key = "…"
//! standard_webhooks_secrets = ["whsec_…"]
//! max_in_flight = 1000
//! max_connections = 8          # attempts in flight to one of its receivers at once
//! max_delivery_rate = 50.0     # attempts started per second, at most
//! operations_url = "https://acme.example/ops"   # receiver.failing, .recovered, .disabled, …
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use http::HeaderName;
use serde::Deserialize;
use tower_async_request::instance::{element_token, Instance, InstanceMap};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Match {
    Element,
    #[serde(untagged)]
    Header {
        header: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "match", default = "element")]
    matching: Match,
    #[serde(rename = "instance", default)]
    instances: Vec<Entry>,
}

fn element() -> Match {
    Match::Element
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: u64,
    #[serde(default)]
    credentials: Vec<String>,
    callback_url: Option<String>,
    signing_key: Option<String>,
    signing_key_file: Option<PathBuf>,
    #[serde(default)]
    standard_webhooks_secrets: Vec<String>,
    max_in_flight: Option<usize>,
    max_connections: Option<usize>,
    max_delivery_rate: Option<f64>,
    operations_url: Option<String>,
}

/// The instances of one reading of the file.
pub(crate) struct Loaded {
    matching: Match,
    instances: Vec<Instance>,
    /// The instances without a key: their callbacks would go unsigned.
    unsigned: Vec<u64>,
}

impl Loaded {
    /// Refuses a reading whose callbacks would go unsigned: an instance without keys, or no
    /// instance at all (no key anywhere).
    fn check_signed(&self, path: &Path) -> Result<(), String> {
        if let Some(id) = self.unsigned.first() {
            return Err(format!(
                "--instances {}: instance {id} has no signing_key, signing_key_file or \
                 standard_webhooks_secrets: its callbacks would go unsigned (give it a key, or \
                 pass --unsigned-callbacks to allow that)",
                path.display()
            ));
        }
        if self.instances.is_empty() {
            return Err(format!(
                "--instances {}: lists no [[instance]], so no key to sign callbacks with (pass \
                 --unsigned-callbacks to allow that)",
                path.display()
            ));
        }
        Ok(())
    }
}

/// Reads and checks `path`: every instance built, ids and credentials unique.
pub(crate) fn read(path: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("--instances {}: {error}", path.display()))?;
    let file: File = toml::from_str(&text).map_err(|error| {
        let at = error.span().map_or_else(String::new, |span| {
            let (line, column) = line_column(&text, span.start);
            format!("line {line}, column {column}: ")
        });
        format!("--instances {}: {at}{}", path.display(), error.message())
    })?;
    let mut ids = HashSet::new();
    let mut credentials = HashSet::new();
    let mut instances = Vec::with_capacity(file.instances.len());
    let mut unsigned = Vec::new();
    for entry in file.instances {
        let at = format!("--instances {}: instance {}", path.display(), entry.id);
        if !ids.insert(entry.id) {
            return Err(format!("{at} is listed twice"));
        }
        if entry.credentials.is_empty() {
            return Err(format!(
                "{at} has no credentials: no request could reach it"
            ));
        }
        let mut builder = Instance::builder(entry.id);
        for credential in &entry.credentials {
            if !credentials.insert(credential.clone()) {
                return Err(format!("{at}: a credential is given to two instances"));
            }
            builder = builder.credential(credential.clone());
        }
        if let Some(url) = entry.callback_url {
            builder = builder.callback_url(url);
        }
        let key = match (entry.signing_key, entry.signing_key_file) {
            (Some(_), Some(_)) => {
                return Err(format!("{at}: signing_key or signing_key_file, not both"))
            }
            (Some(key), None) => Some(key.into_bytes()),
            (None, Some(file)) => Some(crate::setup::secret_file(&file, "signing_key_file")?),
            (None, None) => None,
        };
        if key.is_none() && entry.standard_webhooks_secrets.is_empty() {
            unsigned.push(entry.id);
        }
        if let Some(key) = key {
            builder = builder.signing_key(key);
        }
        for secret in entry.standard_webhooks_secrets {
            builder = builder.standard_webhooks_secret(secret);
        }
        if let Some(max) = entry.max_in_flight {
            builder = builder.max_in_flight(max);
        }
        if let Some(max) = entry.max_connections {
            builder = builder.max_connections(max);
        }
        if let Some(rate) = entry.max_delivery_rate {
            builder = builder.max_delivery_rate(rate);
        }
        if let Some(url) = entry.operations_url {
            builder = builder.operations_url(url);
        }
        // The builder's error names the instance itself.
        let built = builder.build();
        instances.push(built.map_err(|error| format!("--instances {}: {error}", path.display()))?);
    }
    Ok(Loaded {
        matching: file.matching,
        instances,
        unsigned,
    })
}

/// Where byte `offset` of `text` is, as editors count: line and column (in characters), from 1.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// The map of the first reading, and what later readings change.
pub(crate) struct Instances {
    path: PathBuf,
    matching: Match,
    map: InstanceMap,
    ids: HashSet<u64>,
    /// `--unsigned-callbacks`: instances without keys are allowed.
    unsigned_callbacks: bool,
}

impl Instances {
    pub(crate) fn start(path: &Path, unsigned_callbacks: bool) -> Result<Self, String> {
        let loaded = read(path)?;
        if !unsigned_callbacks {
            loaded.check_signed(path)?;
        }
        let map = match &loaded.matching {
            Match::Element => InstanceMap::by_credential(element_token),
            Match::Header { header } => {
                let name = HeaderName::try_from(header.as_str()).map_err(|_| {
                    format!(
                        "--instances {}: {header:?} is not a header name",
                        path.display()
                    )
                })?;
                InstanceMap::by_credential(move |parts| parts.headers.get(&name)?.to_str().ok())
            }
        };
        let mut instances = Self {
            path: path.to_owned(),
            matching: loaded.matching.clone(),
            map,
            ids: HashSet::new(),
            unsigned_callbacks,
        };
        instances.apply(loaded);
        Ok(instances)
    }

    pub(crate) fn map(&self) -> InstanceMap {
        self.map.clone()
    }

    /// Reads the file again and applies it; on any problem keeps the instances as they are.
    pub(crate) fn reload(&mut self) -> Result<usize, String> {
        let loaded = read(&self.path)?;
        if !self.unsigned_callbacks {
            loaded.check_signed(&self.path)?;
        }
        if loaded.matching != self.matching {
            return Err(format!(
                "--instances {}: `match` cannot change while running (restart to change it)",
                self.path.display()
            ));
        }
        Ok(self.apply(loaded))
    }

    /// Inserts (or replaces) every instance read and removes those no longer listed: requests
    /// in flight keep going; the next delivery of each event uses its instance as it is now.
    fn apply(&mut self, loaded: Loaded) -> usize {
        let listed: HashSet<u64> = loaded.instances.iter().map(Instance::id).collect();
        for instance in loaded.instances {
            self.map.insert(instance);
        }
        for gone in self.ids.difference(&listed) {
            self.map.remove(*gone);
        }
        self.ids = listed;
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("tar-instances-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    const ONE: &str = r#"
        [[instance]]
        id = 30
        credentials = ["acme", "acme-next"]
        callback_url = "https://acme.example/hooks"
        signing_key = "k"
        standard_webhooks_secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
        max_in_flight = 10
        max_connections = 4
        max_delivery_rate = 2.5
        operations_url = "https://acme.example/ops"
    "#;

    #[test]
    fn a_file_reads_into_instances_matched_by_element_token_by_default() {
        let path = file("one", ONE);
        let loaded = read(&path).unwrap();
        assert_eq!(loaded.matching, Match::Element);
        assert_eq!(loaded.instances.len(), 1);
        assert_eq!(loaded.instances[0].id(), 30);
        assert_eq!(loaded.instances[0].max_in_flight(), Some(10));
        assert_eq!(loaded.instances[0].max_connections(), Some(4));
        assert_eq!(loaded.instances[0].max_delivery_rate(), Some(2.5));
        assert_eq!(
            loaded.instances[0].operations_url().unwrap(),
            "https://acme.example/ops"
        );
        let header = file(
            "header",
            &format!("match = {{ header = \"x-tenant\" }}\n{ONE}"),
        );
        assert_eq!(
            read(&header).unwrap().matching,
            Match::Header {
                header: "x-tenant".into()
            }
        );
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(header);
    }

    #[test]
    fn lines_and_columns_count_from_1_in_characters() {
        let text = "a = 1\nbé = [\n  x";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // `é` is two bytes and one column; an offset inside it counts from its start.
        assert_eq!(line_column(text, 9), (2, 3));
        assert_eq!(line_column(text, 8), (2, 2));
        assert_eq!(line_column(text, text.len()), (3, 4));
        assert_eq!(line_column(text, text.len() + 5), (3, 4));
    }

    #[test]
    fn a_file_that_does_not_parse_is_named_with_where() {
        for (name, text, says) in [
            (
                "syntax",
                "[[instance]]\nid = 1\ncredentials = [\"é\"] x = 1\n",
                ": line 3, column 21: ",
            ),
            ("type", "[[instance]]\nid = -1\n", ": line 2, column 6: "),
            (
                "unknown-at",
                "[[instance]]\nid = 1\ncredentials = [\"a\"]\ncolour = \"red\"\n",
                ": line 4, column 1: ",
            ),
        ] {
            let path = file(name, text);
            let error = read(&path)
                .err()
                .unwrap_or_else(|| panic!("{name} was accepted"));
            assert!(error.contains(says), "{name}: {error}");
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn mistakes_are_named() {
        for (name, text, says) in [
            ("twice", &*format!("{ONE}{ONE}"), "listed twice"),
            ("nocred", "[[instance]]\nid = 1\n", "no credentials"),
            (
                "shared",
                "[[instance]]\nid = 1\ncredentials = [\"a\"]\n[[instance]]\nid = 2\ncredentials = [\"a\"]\n",
                "two instances",
            ),
            (
                "bothkeys",
                "[[instance]]\nid = 1\ncredentials = [\"a\"]\nsigning_key = \"k\"\nsigning_key_file = \"/k\"\n",
                "not both",
            ),
            ("unknown", "[[instance]]\nid = 1\ncredentials = [\"a\"]\ncolour = \"red\"\n", "colour"),
            (
                "badsecret",
                "[[instance]]\nid = 1\ncredentials = [\"a\"]\nstandard_webhooks_secrets = [\"nope\"]\n",
                "instance 1",
            ),
            (
                "norate",
                "[[instance]]\nid = 1\ncredentials = [\"a\"]\nmax_delivery_rate = 0\n",
                "instance 1: max_delivery_rate",
            ),
            (
                "noconnections",
                "[[instance]]\nid = 1\ncredentials = [\"a\"]\nmax_connections = 0\n",
                "instance 1: max_connections",
            ),
            (
                "badops",
                "[[instance]]\nid = 1\ncredentials = [\"a\"]\noperations_url = \"ftp://ops.example/\"\n",
                "instance 1: operations_url",
            ),
        ] {
            let path = file(name, text);
            let error = read(&path).err().unwrap_or_else(|| panic!("{name} was accepted"));
            assert!(error.contains(says), "{name}: {error}");
            // Not twice: the builder's error names the instance itself.
            assert!(error.matches("instance ").count() <= 1, "{name}: {error}");
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn an_instance_without_keys_or_no_instance_is_refused_unless_unsigned_callbacks() {
        let keyless = format!("{ONE}[[instance]]\nid = 31\ncredentials = [\"globex\"]\n");
        for (name, text, says) in [
            ("keyless", &*keyless, "instance 31 has no signing_key"),
            ("empty", "match = \"element\"\n", "lists no [[instance]]"),
        ] {
            let path = file(name, text);
            let error = Instances::start(&path, false)
                .err()
                .unwrap_or_else(|| panic!("{name} was accepted"));
            assert!(error.contains(says), "{name}: {error}");
            assert!(error.contains("--unsigned-callbacks"), "{name}: {error}");
            assert!(Instances::start(&path, true).is_ok(), "{name}");
            let _ = std::fs::remove_file(path);
        }
        // Read again on SIGHUP: refused, the instances as they were.
        let path = file("reload", ONE);
        let mut instances = Instances::start(&path, false).unwrap();
        std::fs::write(&path, &keyless).unwrap();
        let error = instances.reload().unwrap_err();
        assert!(error.contains("instance 31"), "{error}");
        assert_eq!(instances.ids, HashSet::from([30]));
        let _ = std::fs::remove_file(path);
    }
}
