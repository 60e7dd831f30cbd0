//! Faults injected into the simulated API server: errors, conflicts, latency, dropped
//! watches.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::store::ApiError;

/// The request verbs faults can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET with watch=true.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl Verb {
    pub(super) fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Create | Verb::Update | Verb::Patch | Verb::Delete
        )
    }
}

/// Faults injected into requests, configurable while the server runs.
#[derive(Debug)]
pub struct Faults {
    /// Share of requests of a verb answered with 500 (0.0 to 1.0).
    pub error_rate: BTreeMap<Verb, f64>,
    /// Share of writes answered with 409 Conflict.
    pub conflict_rate: f64,
    /// Delay added to every request of a verb.
    pub latency: BTreeMap<Verb, Duration>,
    /// Watch connections are closed after this long.
    pub drop_watches_after: Option<Duration>,
    rng: fastrand::Rng,
}

impl Faults {
    /// No faults; `seed` makes later random faults replayable.
    pub fn none(seed: u64) -> Self {
        Self {
            error_rate: BTreeMap::new(),
            conflict_rate: 0.0,
            latency: BTreeMap::new(),
            drop_watches_after: None,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    pub(super) fn roll(&mut self, verb: Verb) -> Option<ApiError> {
        let error_rate = self.error_rate.get(&verb).copied().unwrap_or(0.0);
        if error_rate > 0.0 && self.rng.f64() < error_rate {
            return Some(ApiError::Internal("injected fault: internal error".into()));
        }
        if verb.is_write() && self.conflict_rate > 0.0 && self.rng.f64() < self.conflict_rate {
            return Some(ApiError::Conflict("injected fault: the object has been modified; please apply your changes to the latest version and try again".into()));
        }
        None
    }
}
