//! Semantic validation of `[[alert]]` rules.

use std::collections::HashMap;
use std::time::Duration;

use super::KeyError;
use super::schema::RawAlert;
use super::types::{AlertAction, AlertMetric, AlertRule, Severity, Threshold};
use super::validate::{argv, check_number, int, keyword, non_empty, push};

/// Default actions when `actions` is absent: logging is always safe.
const DEFAULT_ACTIONS: &[AlertAction] = &[AlertAction::Log];

pub(crate) fn alert(
    index: usize,
    raw: RawAlert,
    wal_names: &[String],
    errors: &mut Vec<KeyError>,
) -> Option<AlertRule> {
    let before = errors.len();
    let key = |k: &str| format!("alert[{index}].{k}");
    let name = non_empty(raw.name).unwrap_or_else(|| {
        push(errors, &key("name"), "is required and must not be empty");
        String::new()
    });
    let metric = metric(raw.metric, &key("metric"), errors);
    let threshold = threshold(raw.above, raw.below, metric, index, errors);
    let for_secs = int(raw.for_secs, 0, 0, &key("for_secs"), errors);
    let severity = keyword(raw.severity, Severity::Warning, &key("severity"), errors);
    let actions = actions(raw.actions, &key("actions"), errors);
    let command = argv(raw.command, &key("command"), errors);
    check_command(&actions, &command, &key("command"), errors);
    let wal = non_empty(raw.wal);
    if let Some(wal) = wal.as_ref().filter(|w| !wal_names.contains(w)) {
        push(errors, &key("wal"), format!("no [[wal]] is named {wal:?}"));
    }
    let rule = AlertRule {
        name,
        metric: metric?,
        threshold: threshold?,
        for_duration: Duration::from_secs(for_secs),
        severity,
        actions,
        command,
        wal,
    };
    (errors.len() == before).then_some(rule)
}

fn metric(raw: Option<String>, key: &str, errors: &mut Vec<KeyError>) -> Option<AlertMetric> {
    if raw.is_none() {
        let msg = format!("is required (one of {})", AlertMetric::expected());
        push(errors, key, msg);
        return None;
    }
    let before = errors.len();
    let metric = keyword(raw, AlertMetric::WalSizeMb, key, errors);
    (errors.len() == before).then_some(metric)
}

/// Exactly one of `above` / `below`, a non-negative number within the metric's range.
fn threshold(
    above: Option<f64>,
    below: Option<f64>,
    metric: Option<AlertMetric>,
    index: usize,
    errors: &mut Vec<KeyError>,
) -> Option<Threshold> {
    let (key, threshold) = match (above, below) {
        (Some(v), None) => ("above", Threshold::Above(v)),
        (None, Some(v)) => ("below", Threshold::Below(v)),
        (Some(_), Some(_)) | (None, None) => {
            let msg = "exactly one of above/below is required";
            push(errors, &format!("alert[{index}].above"), msg);
            return None;
        }
    };
    let value = above.or(below).unwrap_or_default();
    let max = metric.and_then(|m| m.max_threshold());
    check_number(value, max, &format!("alert[{index}].{key}"), errors).then_some(threshold)
}

/// Known actions, at least one, no duplicates; absent means `["log"]`.
fn actions(raw: Option<Vec<String>>, key: &str, errors: &mut Vec<KeyError>) -> Vec<AlertAction> {
    let Some(raw) = raw else {
        return DEFAULT_ACTIONS.to_vec();
    };
    if raw.is_empty() {
        let msg = format!(
            "at least one action is required (any of {})",
            AlertAction::expected()
        );
        push(errors, key, msg);
    }
    let mut actions = Vec::new();
    for (i, text) in raw.into_iter().enumerate() {
        let before = errors.len();
        let action = keyword(Some(text), AlertAction::Log, &format!("{key}[{i}]"), errors);
        if errors.len() > before {
            continue;
        }
        if actions.contains(&action) {
            push(
                errors,
                &format!("{key}[{i}]"),
                format!("duplicate action {:?}", action.as_str()),
            );
        } else {
            actions.push(action);
        }
    }
    actions
}

/// `command` and the `command` action go together; one without the other is a mistake.
fn check_command(
    actions: &[AlertAction],
    command: &[String],
    key: &str,
    errors: &mut Vec<KeyError>,
) {
    let wants = actions.contains(&AlertAction::Command);
    if wants && command.is_empty() {
        push(
            errors,
            key,
            "must not be empty when actions include \"command\"",
        );
    } else if !wants && !command.is_empty() {
        push(errors, key, "is set but actions do not include \"command\"");
    }
}

/// Alert names identify alert state and `ALERT_NAME`, so they must be unique.
pub(crate) fn check_duplicate_alerts(alerts: &[(usize, AlertRule)], errors: &mut Vec<KeyError>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, alert) in alerts {
        match seen.get(alert.name.as_str()) {
            Some(first) => {
                let msg = format!("duplicate name {:?} (also alert[{first}])", alert.name);
                push(errors, &format!("alert[{i}].name"), msg);
            }
            None => {
                seen.insert(&alert.name, *i);
            }
        }
    }
}
