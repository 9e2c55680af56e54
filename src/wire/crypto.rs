//! The one rustls crypto provider of the crate: *ring*'s, for every TLS client (callbacks,
//! `https` upstreams) and for random secrets.

use rustls::crypto::CryptoProvider;

/// *ring*'s provider. rustls 0.23.48 deprecates it because *ring* has no post-quantum key
/// exchange; its other provider, aws-lc-rs, needs a C and CMake build that this crate does not
/// ask of its users. The choice is made here once, so one place says so.
pub(crate) fn provider() -> CryptoProvider {
    #[allow(deprecated)]
    rustls::crypto::ring::default_provider()
}
