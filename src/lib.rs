//! Passerelle: a FHIR R4 gateway for French admission and orientation requests.
//!
//! - [`config`] reads the TOML file and the environment into one typed [`config::Config`].
//! - [`store`] owns the database: resources as JSON with every version, the search-index
//!   tables, and the single write path (group commit on SQLite, pooled transactions on
//!   PostgreSQL). It knows SQL, not FHIR rules.
//! - [`fhir`] is the FHIR R4 server: the base model and structural validation, search
//!   parameters and their extraction, the REST interactions, Bundles, patches, conformance.
//! - [`directory`] synchronises the ROR (units, organisations, places) into the store
//!   through the FHIR layer, on demand (`passerelle ror sync`) or on a schedule.
//! - [`admin`] is what the operator does from the command line (`passerelle admin`).
//! - [`server`] assembles the HTTP application (router, middleware, operations endpoints) and
//!   runs it with graceful shutdown.
//!
//! `ARCHITECTURE.md` at the repository root is the map; read it first.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub mod demo;
pub mod directory;
pub mod export;
pub mod fhir;
pub mod http_client;
pub mod observe;
pub mod server;
pub mod store;
pub mod time;
pub mod workflow;

/// `rustls` needs one process-wide crypto provider; `ring` is the one built in (reqwest is
/// built with `rustls-no-provider`). Whatever builds an HTTP client (the PSC and ROR clients,
/// tests) calls this first; calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
