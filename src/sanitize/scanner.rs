//! The scans inside `sanitize`: before any round (the verdict the plan
//! follows), after rounds with `--until-clean`, and after training.

use crate::classifier::Classifier;
use crate::data::Dataset;
use crate::error::Result;
use crate::model::InputMap;
use crate::scan::{self, ScanConfig, ScanResult, Verdict};

use super::{Event, Observer, Residual, SanitizeConfig, ScanVerdict, ScanWhen, SCAN_SAMPLES};

/// Runs the scan on the first [`SCAN_SAMPLES`] clean samples and keeps the
/// first result, against which later clean verdicts measure what is left of
/// the targets found before ([`scan::residual`]).
pub(crate) struct Scanner<'a> {
    classifier: &'a dyn Classifier,
    map: &'a InputMap,
    set: Dataset,
    /// `None`: `--no-scan`.
    config: Option<ScanConfig>,
    first: Option<ScanResult>,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(
        classifier: &'a dyn Classifier,
        map: &'a InputMap,
        clean: &Dataset,
        config: &SanitizeConfig,
    ) -> Result<Scanner<'a>> {
        Ok(Scanner {
            classifier,
            map,
            set: clean.slice(0..clean.len().min(SCAN_SAMPLES))?,
            config: config.scan.as_ref().map(|c| ScanConfig {
                preprocess: config.preprocess.clone(),
                ..c.clone()
            }),
            first: None,
        })
    }

    /// Scans the model's current weights; `None` with `--no-scan`.
    pub(crate) fn run(
        &mut self,
        when: ScanWhen,
        observer: &mut dyn Observer,
    ) -> Result<Option<ScanVerdict>> {
        let Some(config) = &self.config else {
            return Ok(None);
        };
        let (result, _) = scan::scan_classifier(
            self.classifier,
            self.map,
            &self.set,
            config,
            &mut |step, steps| observer.event(Event::Scanning { when, step, steps }),
        )?;
        let mut verdict = ScanVerdict::from(&result);
        match &self.first {
            None => self.first = Some(result),
            Some(before) if result.verdict == Verdict::Clean => {
                verdict.residual =
                    scan::residual(self.classifier, self.map, &self.set, config, before)?
                        .into_iter()
                        .map(|(class, share)| Residual { class, share })
                        .collect();
            }
            Some(_) => {}
        }
        observer.event(Event::Scanned {
            when,
            verdict: &verdict,
        });
        Ok(Some(verdict))
    }
}
