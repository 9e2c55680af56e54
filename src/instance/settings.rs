//! One instance's settings: [`Instance`] and its builder.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

use http::Uri;
use sha2::{Digest, Sha256};

use crate::error::ConfigError;
use crate::request::callback_url::{self, Origin, UrlPolicy};
use crate::wire::ids::MAX_SAFE_ID;
use crate::wire::signature::{decode_whsec, Signer};

/// One tenant's settings: its id (the notification's `instanceId`), where its notifications go
/// by default, the keys they are signed with and how many of its events may be unfinished at once.
/// See the [module docs](crate::instance).
///
/// Cheap to clone (one shared allocation). Keys are absorbed into HMAC state when it is built and
/// never shown by `Debug`.
#[derive(Clone)]
pub struct Instance {
    inner: Arc<Settings>,
}

struct Settings {
    id: u64,
    callback_url: Option<Uri>,
    signer: Signer,
    max_in_flight: Option<u32>,
    credentials: Vec<CredentialDigest>,
    max_connections: Option<usize>,
    max_delivery_rate: Option<f64>,
    operations_url: Option<Uri>,
    propagate_trace: bool,
    /// Where delivery keeps what it found for this instance's own callback URL (its receiver),
    /// so the attempts of a healthy instance look nothing up: the layer that set it, by address,
    /// and its entry, opaque here.
    delivery_slot: OnceLock<(usize, Box<dyn Any + Send + Sync>)>,
}

/// The largest per-receiver bound on connections (a semaphore's permits).
pub(crate) const MAX_CONNECTIONS: usize = 1 << 20;
/// The slowest and fastest paces an instance may set (attempts per second).
const MIN_DELIVERY_RATE: f64 = 0.001;
const MAX_DELIVERY_RATE: f64 = 1_000_000.0;

/// A credential as an [`InstanceMap`](super::InstanceMap) keeps it: its SHA-256.
pub(crate) type CredentialDigest = [u8; 32];

pub(crate) fn credential_digest(credential: &str) -> CredentialDigest {
    Sha256::digest(credential.as_bytes()).into()
}

/// Where a digest goes in the map: its first eight bytes (uniform, as a hash's are).
pub(crate) fn credential_key(digest: &CredentialDigest) -> u64 {
    u64::from_le_bytes(digest[..8].try_into().expect("eight bytes"))
}

impl Instance {
    /// Starts configuring the instance with this id (at most 2^53 − 1).
    pub fn builder(id: u64) -> InstanceBuilder {
        InstanceBuilder {
            id,
            callback_url: None,
            signing_key: None,
            standard_secrets: Vec::new(),
            max_in_flight: None,
            credentials: Vec::new(),
            max_connections: None,
            max_delivery_rate: None,
            operations_url: None,
            propagate_trace: true,
        }
    }

    /// The instance id, written into its notifications as `instanceId`.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Where its notifications go when a request names no callback URL.
    pub fn callback_url(&self) -> Option<&Uri> {
        self.inner.callback_url.as_ref()
    }

    /// The most events of this instance that may be unfinished at once, if bounded.
    pub fn max_in_flight(&self) -> Option<usize> {
        self.inner.max_in_flight.map(|max| max as usize)
    }

    /// The most attempts in flight to one of its receivers, when it overrides the layer's
    /// `max_connections_per_receiver`.
    pub fn max_connections(&self) -> Option<usize> {
        self.inner.max_connections
    }

    /// The most delivery attempts per second it starts, if paced.
    pub fn max_delivery_rate(&self) -> Option<f64> {
        self.inner.max_delivery_rate
    }

    /// Where its operational webhooks go (`receiver.failing`, `receiver.recovered`,
    /// `receiver.disabled`, `notification.dead`), if anywhere.
    pub fn operations_url(&self) -> Option<&Uri> {
        self.inner.operations_url.as_ref()
    }

    /// Whether its events keep the request's trace context and its callbacks carry
    /// `traceparent` (feature `opentelemetry`; true unless turned off).
    pub fn propagate_trace(&self) -> bool {
        self.inner.propagate_trace
    }

    pub(crate) fn signer(&self) -> &Signer {
        &self.inner.signer
    }

    pub(crate) fn max_in_flight_u32(&self) -> Option<u32> {
        self.inner.max_in_flight
    }

    pub(crate) fn credential_digests(&self) -> &[CredentialDigest] {
        &self.inner.credentials
    }

    /// What `owner` (a layer's delivery, by address) keeps for this instance's callback URL,
    /// made by `make` the first time; `None` when another layer got there first.
    pub(crate) fn delivery_slot<T: Any + Send + Sync>(
        &self,
        owner: usize,
        make: impl FnOnce() -> T,
    ) -> Option<&T> {
        let (set_by, entry) = self
            .inner
            .delivery_slot
            .get_or_init(|| (owner, Box::new(make())));
        if *set_by == owner {
            entry.downcast_ref()
        } else {
            None
        }
    }
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.inner.id)
            .field("callback_url", &self.inner.callback_url)
            .field("signer", &self.inner.signer)
            .field("max_in_flight", &self.inner.max_in_flight)
            .field("credentials", &self.inner.credentials.len())
            .field("max_connections", &self.inner.max_connections)
            .field("max_delivery_rate", &self.inner.max_delivery_rate)
            .field("operations_url", &self.inner.operations_url)
            .field("propagate_trace", &self.inner.propagate_trace)
            .finish()
    }
}

/// Builds an [`Instance`]; made by [`Instance::builder`]. [`build`](Self::build) checks the
/// settings and reports the first problem as a [`ConfigError`].
pub struct InstanceBuilder {
    id: u64,
    callback_url: Option<String>,
    signing_key: Option<Vec<u8>>,
    standard_secrets: Vec<String>,
    max_in_flight: Option<usize>,
    credentials: Vec<String>,
    max_connections: Option<usize>,
    max_delivery_rate: Option<f64>,
    operations_url: Option<String>,
    propagate_trace: bool,
}

impl fmt::Debug for InstanceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceBuilder")
            .field("id", &self.id)
            .field("callback_url", &self.callback_url)
            .field(
                "signing_key",
                &self.signing_key.as_ref().map(|_| "<redacted>"),
            )
            .field("standard_webhooks_secrets", &self.standard_secrets.len())
            .field("max_in_flight", &self.max_in_flight)
            .field("credentials", &self.credentials.len())
            .field("max_connections", &self.max_connections)
            .field("max_delivery_rate", &self.max_delivery_rate)
            .field("operations_url", &self.operations_url)
            .field("propagate_trace", &self.propagate_trace)
            .finish()
    }
}

/// The names settings have in error messages: an instance's own, or the layer builder's
/// single-instance shorthand.
#[derive(Clone, Copy)]
pub(crate) enum Naming {
    Instance,
    Layer,
}

impl InstanceBuilder {
    /// Where notifications go when a request names no callback URL. Trusted operator
    /// configuration: it may point at private addresses.
    pub fn callback_url(mut self, url: impl Into<String>) -> Self {
        self.callback_url = Some(url.into());
        self
    }

    /// Turns on the Elements scheme (`Elements-Webhook-Signature`) keyed with these bytes.
    pub fn signing_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.signing_key = Some(key.as_ref().to_vec());
        self
    }

    /// Turns on the Standard Webhooks scheme with a `whsec_<base64>` secret. Repeatable: every
    /// callback then carries one signature per secret, so receivers can rotate.
    pub fn standard_webhooks_secret(mut self, secret: impl Into<String>) -> Self {
        self.standard_secrets.push(secret.into());
        self
    }

    /// The most events of this instance that may be unfinished at once (running jobs plus
    /// undelivered notifications). At the bound its async requests get `503` with `Retry-After`,
    /// code `overloaded`, while other instances are still accepted. The layer's own
    /// `max_in_flight` applies too. Unbounded by default.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = Some(max);
        self
    }

    /// A credential that identifies this instance's requests (an element token, an API key), for
    /// an [`InstanceMap::by_credential`](super::InstanceMap::by_credential). Repeatable: give
    /// the new one alongside the old while clients move over. Kept only as its SHA-256, never
    /// shown by `Debug`.
    pub fn credential(mut self, credential: impl Into<String>) -> Self {
        self.credentials.push(credential.into());
        self
    }

    /// The most delivery attempts in flight at once to one of its receivers (a callback origin:
    /// scheme, host, port); further due notifications wait their turn without using their
    /// attempt budget. Overrides the layer's
    /// [`max_connections_per_receiver`](crate::AsyncRequestLayerBuilder::max_connections_per_receiver).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max);
        self
    }

    /// Paces its delivery attempts to at most `per_second` (evenly spaced): due notifications
    /// wait their turn, none is dropped. Unpaced by default.
    pub fn max_delivery_rate(mut self, per_second: f64) -> Self {
        self.max_delivery_rate = Some(per_second);
        self
    }

    /// Where its operational webhooks go: `receiver.failing` (a receiver's circuit opened),
    /// `receiver.recovered`, `receiver.disabled` and `notification.dead`, signed with its keys
    /// and retried like any notification. Trusted operator configuration, as
    /// [`callback_url`](Self::callback_url).
    pub fn operations_url(mut self, url: impl Into<String>) -> Self {
        self.operations_url = Some(url.into());
        self
    }

    /// With the feature `opentelemetry`: whether its events keep the request's trace context
    /// and its callbacks carry the attempt's (`traceparent`, `tracestate`). On by default; turn
    /// it off for receivers outside the operator's trust, which would otherwise learn the
    /// caller's trace ids (W3C Trace Context, privacy considerations). Without the feature it
    /// changes nothing.
    pub fn propagate_trace(mut self, propagate: bool) -> Self {
        self.propagate_trace = propagate;
        self
    }

    /// Checks the settings and builds the instance.
    pub fn build(self) -> Result<Instance, ConfigError> {
        self.build_named(Naming::Instance)
    }

    pub(crate) fn build_named(self, naming: Naming) -> Result<Instance, ConfigError> {
        let id = self.id;
        let error = |setting: &str, why: &dyn fmt::Display| match naming {
            Naming::Instance => ConfigError::new(format!("instance {id}: {setting}: {why}")),
            Naming::Layer => ConfigError::new(format!("{setting}: {why}")),
        };
        let (id_name, url_name) = match naming {
            Naming::Instance => ("id", "callback_url"),
            Naming::Layer => ("instance_id", "default_callback_url"),
        };
        if id > MAX_SAFE_ID {
            return Err(error(
                id_name,
                &"above 2^53 - 1, which JavaScript receivers cannot read exactly",
            ));
        }
        let callback_url = self
            .callback_url
            .as_deref()
            .map(|url| {
                callback_url::validate(url.as_bytes(), Origin::Operator, &UrlPolicy::default())
                    .map_err(|refusal| error(url_name, &refusal.message))
            })
            .transpose()?;
        let standard_keys = self
            .standard_secrets
            .iter()
            .map(|secret| {
                decode_whsec(secret).map_err(|why| error("standard_webhooks_secret", &why))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_in_flight = match self.max_in_flight {
            None => None,
            Some(max @ 1..=0xFFFF_FFFF) => Some(max as u32),
            Some(max) => {
                return Err(error(
                    "max_in_flight",
                    &format_args!("must be between 1 and {}, not {max}", u32::MAX),
                ))
            }
        };
        if self
            .max_connections
            .is_some_and(|max| max == 0 || max > MAX_CONNECTIONS)
        {
            return Err(error(
                "max_connections",
                &format_args!("must be between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        if self
            .max_delivery_rate
            .is_some_and(|rate| !(MIN_DELIVERY_RATE..=MAX_DELIVERY_RATE).contains(&rate))
        {
            return Err(error(
                "max_delivery_rate",
                &format_args!(
                    "must be between {MIN_DELIVERY_RATE} and {MAX_DELIVERY_RATE} per second"
                ),
            ));
        }
        let operations_url = self
            .operations_url
            .as_deref()
            .map(|url| {
                callback_url::validate(url.as_bytes(), Origin::Operator, &UrlPolicy::default())
                    .map_err(|refusal| error("operations_url", &refusal.message))
            })
            .transpose()?;
        if self.credentials.iter().any(String::is_empty) {
            return Err(error("credential", &"must not be empty"));
        }
        let mut credentials: Vec<CredentialDigest> = self
            .credentials
            .iter()
            .map(|credential| credential_digest(credential))
            .collect();
        credentials.sort_unstable();
        credentials.dedup();
        Ok(Instance {
            inner: Arc::new(Settings {
                id,
                callback_url,
                signer: Signer::new(self.signing_key.as_deref(), &standard_keys),
                max_in_flight,
                credentials,
                max_connections: self.max_connections,
                max_delivery_rate: self.max_delivery_rate,
                operations_url,
                propagate_trace: self.propagate_trace,
                delivery_slot: OnceLock::new(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_kept_as_their_sha256_and_never_shown() {
        let builder = Instance::builder(30)
            .credential("acme-element-token")
            .credential("acme-next-token");
        assert!(!format!("{builder:?}").contains("token"), "{builder:?}");
        let instance = builder.build().unwrap();
        let mut expected: Vec<CredentialDigest> = ["acme-element-token", "acme-next-token"]
            .iter()
            .map(|token| Sha256::digest(token.as_bytes()).into())
            .collect();
        let mut kept = instance.credential_digests().to_vec();
        expected.sort_unstable();
        kept.sort_unstable();
        assert_eq!(kept, expected);
        assert!(!format!("{instance:?}").contains("token"), "{instance:?}");
    }

    #[test]
    fn settings_are_checked_and_named() {
        let error = |builder: InstanceBuilder| builder.build().unwrap_err().to_string();
        let message = error(Instance::builder(1 << 53));
        assert!(
            message.contains("instance 9007199254740992: id"),
            "{message}"
        );
        let message = error(Instance::builder(7).callback_url("ftp://example.com/"));
        assert!(message.contains("instance 7: callback_url"), "{message}");
        let message = error(Instance::builder(7).standard_webhooks_secret("whsec_***"));
        assert!(message.contains("standard_webhooks_secret"), "{message}");
        assert!(!message.contains("***"), "{message}");
        let message = error(Instance::builder(7).max_in_flight(0));
        assert!(message.contains("max_in_flight"), "{message}");
        let message = error(Instance::builder(7).max_connections(0));
        assert!(message.contains("instance 7: max_connections"), "{message}");
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let message = error(Instance::builder(7).max_delivery_rate(rate));
            assert!(message.contains("max_delivery_rate"), "{message}");
        }
        let message = error(Instance::builder(7).operations_url("ftp://example.com/"));
        assert!(message.contains("instance 7: operations_url"), "{message}");
        let message = error(Instance::builder(7).credential(""));
        assert!(message.contains("credential"), "{message}");
    }

    #[test]
    fn a_built_instance_says_what_it_holds_and_hides_its_keys() {
        let instance = Instance::builder(30)
            .callback_url("http://10.0.0.5/hooks")
            .signing_key("acme-secret-key")
            .standard_webhooks_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
            .max_in_flight(3)
            .credential("acme-element-token")
            .max_connections(8)
            .max_delivery_rate(100.0)
            .operations_url("https://ops.example.com/hooks")
            .build()
            .unwrap();
        assert_eq!(instance.max_connections(), Some(8));
        assert_eq!(instance.max_delivery_rate(), Some(100.0));
        assert_eq!(
            instance.operations_url().unwrap(),
            "https://ops.example.com/hooks"
        );
        assert_eq!(instance.id(), 30);
        assert_eq!(instance.credential_digests().len(), 1);
        assert_eq!(instance.callback_url().unwrap(), "http://10.0.0.5/hooks");
        assert_eq!(instance.max_in_flight(), Some(3));
        let text = format!("{instance:?}");
        assert!(!text.contains("acme-secret-key"), "{text}");
        assert!(!text.contains("C2FVsBQ"), "{text}");
        let text = format!("{:?}", Instance::builder(30).signing_key("acme-secret-key"));
        assert!(!text.contains("acme-secret-key"), "{text}");
    }
}
