//! The directory: units (HealthcareService), their organisations and places, synchronised
//! from the ROR (contract §5) into the gateway's own FHIR resources.
//!
//! - [`client`]: the ROR HTTP client (OAuth2, `Ror-*` headers, retries, `$export`).
//! - [`mapping`]: `mappings/ror.json`, loaded and checked at start, and the ROR → gateway
//!   mapping of one resource.
//! - [`sync`]: full and delta runs, closures, the high-water mark and the lease.
//! - [`schedule`]: the daily delta and weekly full inside `serve`.

pub mod client;
pub mod mapping;
pub mod schedule;
pub mod sync;

use std::sync::Arc;

use crate::config::RorConfig;
use client::{ClientError, RorClient, Settings};
use mapping::{Mapping, MappingError};
use schedule::Schedule;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("configuration key `ror.{key}`: {message}")]
    Schedule { key: &'static str, message: String },
}

/// The directory settings, checked at start.
pub struct Directory {
    pub mapping: Mapping,
    pub delta_schedule: Schedule,
    pub full_schedule: Schedule,
    pub region: Option<String>,
    pub use_export: bool,
    pub page_size: usize,
}

impl Directory {
    /// The mapping and schedules of `[ror]`, and a client when `ror.base_url` is set.
    pub fn from_config(
        c: &RorConfig,
    ) -> Result<(Arc<Directory>, Option<Arc<RorClient>>), DirectoryError> {
        let mapping = Mapping::load(c.mapping_file.as_deref())?;
        let sched = |key: &'static str, text: &str| {
            Schedule::parse(text).map_err(|message| DirectoryError::Schedule { key, message })
        };
        let directory = Directory {
            mapping,
            delta_schedule: sched("delta_schedule", &c.delta_schedule)?,
            full_schedule: sched("full_schedule", &c.full_schedule)?,
            region: c.region.clone(),
            use_export: c.use_export,
            page_size: c.page_size,
        };
        let client = match &c.base_url {
            Some(_) => Some(Arc::new(RorClient::new(Settings::from_config(c)?)?)),
            None => None,
        };
        Ok((Arc::new(directory), client))
    }

    pub fn options(&self, mode: sync::Mode, owner: &str, progress: bool) -> sync::SyncOptions {
        sync::SyncOptions {
            mode,
            region: self.region.clone(),
            owner: owner.to_owned(),
            progress,
            use_export: self.use_export,
            page_size: self.page_size,
        }
    }
}
