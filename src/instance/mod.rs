//! Instances: one layer serving many tenants, each with its own callback URL, signing keys and
//! share of the in-flight bound.
//!
//! An *instance* is one customer's connection to the API (an "element instance" in the platform
//! this crate re-creates); its id is the notification's `instanceId`. The layer asks a
//! [`ResolveInstance`] which instance an async request belongs to — only on the async path — and,
//! before every delivery attempt, for that instance's *current* settings, so a rotated key or a
//! changed URL applies to retries and to events recovered after a restart. Only the instance id is
//! recorded with an event; keys never reach a store.
//!
//! - [`Instance`]: an instance's settings, made by [`Instance::builder`].
//! - [`ResolveInstance`]: the trait the layer asks; [`InstanceMap`] is the built-in one, a map
//!   from id to instance that an operator changes while requests flow. [`InstanceMap::new`] takes
//!   a function that names a request's instance id; [`InstanceMap::by_credential`] one that finds
//!   its credential (say [`element_token`]), each instance listing its own
//!   ([`InstanceBuilder::credential`]), so an instance added at run time is reachable at once.
//!
//! | request | answer |
//! |---|---|
//! | no instance identified | `401`, `unknown_instance` |
//! | the resolver failed | `503` + `Retry-After`, `instance_unavailable` |
//! | the instance already holds its own `max_in_flight` | `503` + `Retry-After`, `overloaded` |
//!
//! A request's own callback URL header still wins over the instance's URL (and is checked as
//! untrusted input); the instance's URL is operator configuration and trusted. A notification
//! whose instance is removed before it is delivered becomes a dead letter: it is never sent
//! unsigned or signed with another instance's key.
//!
//! # Example
//!
//! ```
//! use tower_async_request::instance::{Instance, InstanceMap};
//! use tower_async_request::AsyncRequestLayer;
//!
//! /// `Authorization: User <secret>, Element <token>`: the element token names the instance.
//! fn element_of(parts: &http::request::Parts) -> Option<u64> {
//!     let header = parts.headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
//!     let token = header.split(',').find_map(|p| p.trim().strip_prefix("Element "))?;
//!     match token.trim() {
//!         "acme-element-token" => Some(30),
//!         "globex-element-token" => Some(31),
//!         _ => None,
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let instances = InstanceMap::new(element_of);
//! instances.insert(
//!     Instance::builder(30)
//!         .callback_url("https://acme.example/hooks")
//!         .signing_key("acme-key")
//!         .max_in_flight(1_000)
//!         .build()?,
//! );
//! instances.insert(
//!     Instance::builder(31)
//!         .callback_url("https://globex.example/hooks")
//!         .standard_webhooks_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
//!         .build()?,
//! );
//! let layer = AsyncRequestLayer::builder()
//!     .instances(instances.clone())
//!     .build()?;
//!
//! // Later, while requests flow: rotate a key, drop a customer.
//! instances.insert(Instance::builder(30).callback_url("https://acme.example/hooks")
//!     .signing_key("acme-key-2").build()?);
//! instances.remove(31);
//! # drop(layer);
//!
//! // Or let each instance carry its credential: nothing to keep in step outside the map.
//! let by_token = InstanceMap::by_credential(tower_async_request::instance::element_token);
//! by_token.insert(Instance::builder(32).callback_url("https://initech.example/hooks")
//!     .credential("initech-element-token").build()?);
//! # Ok(())
//! # }
//! ```

mod instances;
mod map;
mod resolve;
mod settings;
pub(crate) mod sharded;

pub use self::map::{element_token, InstanceMap};
pub use self::resolve::{ResolveError, ResolveFuture, ResolveInstance};
pub use self::settings::{Instance, InstanceBuilder};

pub(crate) use self::instances::Instances;
pub(crate) use self::settings::{Naming, MAX_CONNECTIONS};
