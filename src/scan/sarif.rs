//! A scan's report as SARIF 2.1.0, the format code-scanning services
//! (GitHub, GitLab, Azure DevOps) read: one run, one rule per kind of
//! finding, one result per model that looks backdoored ([`BACKDOOR_RULE`])
//! or could not be scanned ([`SCAN_ERROR_RULE`]). Clean models give no
//! result. It is written from a [`ScanReport`], after the scan, so that a
//! merged report ([`super::merge`]) converts the same way as a single one.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use serde_sarif::sarif::{
    ArtifactLocation, Location, Message, MultiformatMessageString, PhysicalLocation, PropertyBag,
    ReportingConfiguration, ReportingDescriptor, Result as SarifResult, ResultLevel, Run, Sarif,
    Tool, ToolComponent, Version,
};
use sha2::{Digest, Sha256};

use super::{ModelEntry, ScanReport, Verdict};

/// The rule of a model whose scan flags one or more target classes. Rule ids
/// are stable: code-scanning services track alerts by them.
pub const BACKDOOR_RULE: &str = "IBAU001";
/// The rule of a model that could not be scanned.
pub const SCAN_ERROR_RULE: &str = "IBAU002";
/// The `uriBaseId` of relative model paths: the folder the scan ran in.
pub const SRCROOT: &str = "SRCROOT";
/// The key of each result's `partialFingerprints`; the suffix changes when
/// what is hashed does.
pub const FINGERPRINT_KEY: &str = "ibau/v1";
/// The `$schema` written into the document.
pub const SCHEMA_URI: &str =
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json";

/// One kind of finding.
struct Rule {
    id: &'static str,
    name: &'static str,
    level: ResultLevel,
    short: &'static str,
    full: &'static str,
    help: &'static str,
}

/// The rules, in the order of `tool.driver.rules` (results point at them by
/// index).
const RULES: [Rule; 2] = [
    Rule {
        id: BACKDOOR_RULE,
        name: "backdoor",
        level: ResultLevel::Error,
        short: "The model looks backdoored towards one or more target classes.",
        full: "For every class, ibau searched for the smallest trigger (an additive \
               perturbation and a mask) that sends 90% of clean images to it. The flagged \
               classes are reachable with a trigger much smaller than the other classes \
               need: their score, how many times smaller than the median class's their \
               smallest trigger is, is above the threshold.",
        help: "Do not deploy the model as it is. Remove the backdoor with `ibau sanitize` \
               (I-BAU) and scan the result again, or retrain the model from data you \
               trust. A false alarm is possible on a model with a naturally easy class: \
               when a trigger is known, measure its attack success rate with `ibau eval`.",
    },
    Rule {
        id: SCAN_ERROR_RULE,
        name: "scan-error",
        level: ResultLevel::Warning,
        short: "The model could not be scanned.",
        full: "ibau could not read, import or run the model, or its clean data did not \
               fit it, so nothing is known about a backdoor in it.",
        help: "Read the message for the cause (an unsupported operator, an unreadable \
               file, a model over the memory budget, data of the wrong shape), fix it and \
               scan again. An unscanned model is not a clean one.",
    },
];

/// The SARIF 2.1.0 document of `report`.
pub fn to_sarif(report: &ScanReport) -> Sarif {
    let results: Vec<SarifResult> = report.models.iter().filter_map(result).collect();
    let mut base_ids = BTreeMap::new();
    base_ids.insert(
        SRCROOT.to_string(),
        ArtifactLocation::builder()
            .description(Message::from("The folder `ibau scan` ran in."))
            .build(),
    );
    let mut run_properties = BTreeMap::new();
    if !report.skipped.is_empty() {
        // Not findings, but what a folder scan left out is worth keeping.
        run_properties.insert("skipped".to_string(), json!(report.skipped));
    }
    let run = Run::builder()
        .tool(Tool::from(driver(report)))
        .results(results)
        .original_uri_base_ids(base_ids)
        .properties(property_bag(run_properties))
        .build();
    Sarif::builder()
        .schema(SCHEMA_URI)
        .version(json!(Version::V2_1_0))
        .runs(vec![run])
        .build()
}

/// `tool.driver`: ibau (the version that scanned) and its rules.
fn driver(report: &ScanReport) -> ToolComponent {
    let rules: Vec<ReportingDescriptor> = RULES
        .iter()
        .map(|rule| {
            ReportingDescriptor::builder()
                .id(rule.id)
                .name(rule.name)
                .short_description(text(rule.short))
                .full_description(text(rule.full))
                .help(text(rule.help))
                .default_configuration(
                    ReportingConfiguration::builder()
                        .level(json!(rule.level))
                        .build(),
                )
                .build()
        })
        .collect();
    // No informationUri: the project has no public home yet.
    ToolComponent::builder()
        .name(report.tool.as_str())
        .version(report.version.as_str())
        .rules(rules)
        .build()
}

/// The result of one model, `None` for a clean one.
fn result(model: &ModelEntry) -> Option<SarifResult> {
    let index = match model.verdict {
        Verdict::Clean => return None,
        Verdict::Backdoor => 0,
        Verdict::Error => 1,
    };
    let rule = &RULES[index];
    let mut targets = model.targets.clone();
    targets.sort_unstable();
    let mut fingerprints = BTreeMap::new();
    fingerprints.insert(
        FINGERPRINT_KEY.to_string(),
        fingerprint(rule.id, model, &targets),
    );
    let mut properties = BTreeMap::new();
    properties.insert("targets".to_string(), json!(targets));
    for (key, value) in [
        ("statistic", model.statistic),
        ("threshold", model.threshold),
    ] {
        if let Some(v) = value {
            properties.insert(key.to_string(), json!(v));
        }
    }
    if let Some(u) = &model.untargeted {
        properties.insert("untargeted".to_string(), json!(u));
    }
    if let Some(sha256) = &model.sha256 {
        properties.insert("sha256".to_string(), json!(sha256));
    }
    Some(
        SarifResult::builder()
            .rule_id(rule.id)
            .rule_index(index as i64)
            .level(rule.level)
            .message(Message::from(message(model, &targets).as_str()))
            .locations(vec![location(&model.file)])
            .partial_fingerprints(fingerprints)
            .properties(property_bag(properties))
            .build(),
    )
}

/// What the result says: the suspected targets and the statistic against
/// its threshold, or why the scan failed.
fn message(model: &ModelEntry, targets: &[i64]) -> String {
    if model.verdict == Verdict::Error {
        let cause = model.error.as_deref().unwrap_or("no cause recorded");
        return format!("`{}` could not be scanned: {cause}", model.file);
    }
    if let (true, Some(u)) = (targets.is_empty(), &model.untargeted) {
        return format!(
            "`{}` looks backdoored without one target (all-to-all): a universal mask trigger of {:.1} pixels, {:.2} times smaller than the median class's (threshold {:.2}), moves {:.0}% of the clean images off their class",
            model.file,
            u.mask,
            u.score,
            super::rule::UNTARGETED_THRESHOLD,
            100.0 * u.moved
        );
    }
    let classes = targets
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let noun = if targets.len() == 1 {
        "class"
    } else {
        "classes"
    };
    let measured = match (model.statistic, model.threshold) {
        (Some(s), Some(t)) => format!(" (statistic {s:.2} over threshold {t:.2})"),
        _ => String::new(),
    };
    format!(
        "`{}` looks backdoored: suspected target {noun} {classes}{measured}",
        model.file
    )
}

/// A fingerprint that stays the same across runs while the finding does:
/// sha256 of the rule, the path, the file's sha256 (when it could be read)
/// and the sorted targets. The path is in it so that two copies of one
/// model are two alerts; the content hash so that a retrained model is a
/// new one.
fn fingerprint(rule: &str, model: &ModelEntry, sorted_targets: &[i64]) -> String {
    let identity = json!([rule, model.file, model.sha256, sorted_targets]);
    super::registry::hex(&Sha256::digest(identity.to_string().as_bytes()))
}

/// The model file as a location: a relative path stays relative to
/// [`SRCROOT`], an absolute one becomes a `file://` URI.
fn location(file: &str) -> Location {
    let artifact = match file.strip_prefix('/') {
        Some(absolute) => ArtifactLocation::builder()
            .uri(format!("file:///{}", percent_encode(absolute)))
            .build(),
        None => {
            let mut relative = file;
            while let Some(rest) = relative.strip_prefix("./") {
                relative = rest;
            }
            ArtifactLocation::builder()
                .uri(percent_encode(relative))
                .uri_base_id(SRCROOT)
                .build()
        }
    };
    Location::builder()
        .physical_location(
            PhysicalLocation::builder()
                .artifact_location(artifact)
                .build(),
        )
        .build()
}

/// A path as a URI path: unreserved characters and `/` as they are, every
/// other byte as `%XX` (a `:` in the first segment would otherwise read as
/// a scheme, a space or `#` would end the reference).
fn percent_encode(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn text(s: &str) -> MultiformatMessageString {
    MultiformatMessageString::builder().text(s).build()
}

fn property_bag(properties: BTreeMap<String, Value>) -> PropertyBag {
    PropertyBag::builder()
        .additional_properties(properties)
        .build()
}

#[cfg(test)]
mod tests {
    use super::super::merge::fixtures::{backdoor, clean, failed};
    use super::*;

    fn document(models: Vec<ModelEntry>) -> Value {
        serde_json::to_value(to_sarif(&ScanReport::new(models, Vec::new()))).unwrap()
    }

    fn fingerprints(doc: &Value) -> BTreeMap<String, String> {
        doc["runs"][0]["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let file = r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let print = r["partialFingerprints"][FINGERPRINT_KEY]
                    .as_str()
                    .unwrap()
                    .to_string();
                (file, print)
            })
            .collect()
    }

    #[test]
    fn clean_models_give_no_result() {
        let doc = document(vec![clean("a.onnx"), clean("b.onnx")]);
        assert_eq!(doc["version"], "2.1.0");
        assert_eq!(doc["runs"][0]["results"], json!([]));
        assert_eq!(
            doc["runs"][0]["tool"]["driver"]["rules"][0]["id"],
            "IBAU001"
        );
        assert_eq!(
            doc["runs"][0]["tool"]["driver"]["rules"][1]["id"],
            "IBAU002"
        );
    }

    #[test]
    fn a_backdoor_names_its_targets_and_statistic() {
        let doc = document(vec![backdoor("models/x.onnx", &[7, 3])]);
        let r = &doc["runs"][0]["results"][0];
        assert_eq!(r["ruleId"], BACKDOOR_RULE);
        assert_eq!(r["ruleIndex"], 0);
        assert_eq!(r["level"], "error");
        let text = r["message"]["text"].as_str().unwrap();
        assert!(text.contains("target classes 3, 7"), "{text}");
        assert!(
            text.contains("statistic 4.50 over threshold 2.00"),
            "{text}"
        );
        assert_eq!(r["properties"]["targets"], json!([3, 7]));
        assert_eq!(r["properties"]["statistic"], 4.5);
        let artifact = &r["locations"][0]["physicalLocation"]["artifactLocation"];
        assert_eq!(artifact["uri"], "models/x.onnx");
        assert_eq!(artifact["uriBaseId"], SRCROOT);
    }

    #[test]
    fn an_error_is_a_warning_with_its_cause() {
        let doc = document(vec![failed("/abs/my model.onnx")]);
        let r = &doc["runs"][0]["results"][0];
        assert_eq!(r["ruleId"], SCAN_ERROR_RULE);
        assert_eq!(r["level"], "warning");
        assert!(r["message"]["text"]
            .as_str()
            .unwrap()
            .contains("unsupported"));
        let artifact = &r["locations"][0]["physicalLocation"]["artifactLocation"];
        assert_eq!(artifact["uri"], "file:///abs/my%20model.onnx");
        assert!(artifact.get("uriBaseId").is_none());
    }

    #[test]
    fn fingerprints_are_stable_and_independent_of_order() {
        let models = vec![
            backdoor("a.onnx", &[1]),
            failed("b.onnx"),
            backdoor("c.onnx", &[2, 0]),
        ];
        let first = fingerprints(&document(models.clone()));
        assert_eq!(first, fingerprints(&document(models.clone())));
        let mut reversed = models.clone();
        reversed.reverse();
        // The order of the targets does not count either.
        reversed[0].targets.reverse();
        assert_eq!(first, fingerprints(&document(reversed)));
        let distinct: std::collections::BTreeSet<&String> = first.values().collect();
        assert_eq!(distinct.len(), 3, "{first:?}");
        // Another target is another finding.
        let mut retargeted = models;
        retargeted[0].targets = vec![4];
        assert_ne!(
            first["a.onnx"],
            fingerprints(&document(retargeted))["a.onnx"]
        );
    }

    #[test]
    fn relative_paths_are_encoded_and_lose_their_dot() {
        let artifact = |file: &str| {
            serde_json::to_value(location(file)).unwrap()["physicalLocation"]["artifactLocation"]
                ["uri"]
                .clone()
        };
        assert_eq!(artifact("./m/a.onnx"), "m/a.onnx");
        assert_eq!(artifact("c:x#1.onnx"), "c%3Ax%231.onnx");
        assert_eq!(artifact("modèle.onnx"), "mod%C3%A8le.onnx");
    }
}
