//! The evaluation job's protocol: what the challenge hands a broker job
//! (a batch of pending submissions) and the one result line the job
//! prints back. It exists so the quiz scores from a job's result, as a real
//! challenge scores from the job that ran a miner's code.
//!
//! Both directions are pure functions over bytes. The result is parsed as
//! adversarial input: the job runs on behalf of miners, so what it prints
//! is trusted only as far as [`parse_result`] accepts it — one JSON object,
//! the last non-empty line of stdout, no unknown fields, exactly one verdict
//! per submitted id, bounded in size. Anything else is refused and the batch
//! is not scored.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{MAX_TASK_COUNT, generate_tasks};

/// The variable holding the job's input (JSON [`EvalInput`]). An env value
/// rather than a mount: it is small (see [`MAX_BATCH`]), holds nothing
/// secret (answers are public once submitted) and needs no writable or
/// config-backed mount, so the job starts as fast as the engine allows.
pub const INPUT_ENV: &str = "QUIZ_EVAL_INPUT";

/// The most submissions evaluated by one job.
pub const MAX_BATCH: usize = 64;

/// The most bytes of job stdout looked at; longer output is refused whole
/// (a job that floods its output is not trusted to have ended it well).
pub const MAX_RESULT_BYTES: usize = 16 * 1024;

/// The most bytes of input the evaluate mode reads.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// Why a job's input or result was refused.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The job's output was cut by the broker or is over [`MAX_RESULT_BYTES`].
    #[error("job output is too long ({0} bytes, at most {MAX_RESULT_BYTES}) or was truncated")]
    TooLong(usize),
    /// The job printed nothing.
    #[error("job printed no result line")]
    Empty,
    /// The result line is not a valid [`EvalOutput`].
    #[error("job result line is not valid: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A verdict names an id that was not in the batch, twice, or one is missing.
    #[error("job result does not match the batch: {0}")]
    Mismatch(String),
    /// The input is not a valid [`EvalInput`].
    #[error("invalid {INPUT_ENV}: {0}")]
    BadInput(String),
}

/// One submission to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalItem {
    /// The submission id (echoed in the verdict).
    pub id: i64,
    /// The round the question belongs to.
    pub seed: u64,
    /// The question.
    pub task_id: u32,
    /// The miner's answer.
    pub answer: i64,
}

/// The job's input: a batch of submissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalInput {
    /// At most [`MAX_BATCH`] submissions.
    pub items: Vec<EvalItem>,
}

/// The verdict on one submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalVerdict {
    /// The submission id.
    pub id: i64,
    /// Whether the answer is right.
    pub correct: bool,
}

/// The job's result line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalOutput {
    /// One verdict per input item.
    pub results: Vec<EvalVerdict>,
}

/// Parses and checks the job's input (what the evaluate mode reads).
pub fn parse_input(raw: &str) -> Result<EvalInput, EvalError> {
    if raw.len() > MAX_INPUT_BYTES {
        return Err(EvalError::BadInput(format!(
            "{} bytes, at most {MAX_INPUT_BYTES}",
            raw.len()
        )));
    }
    let input: EvalInput =
        serde_json::from_str(raw).map_err(|e| EvalError::BadInput(e.to_string()))?;
    if input.items.len() > MAX_BATCH {
        return Err(EvalError::BadInput(format!(
            "{} items, at most {MAX_BATCH}",
            input.items.len()
        )));
    }
    if let Some(item) = input.items.iter().find(|i| i.task_id >= MAX_TASK_COUNT) {
        return Err(EvalError::BadInput(format!(
            "task {} of submission {} is beyond {MAX_TASK_COUNT}",
            item.task_id, item.id
        )));
    }
    Ok(input)
}

/// What the job computes: each answer checked against its round's question.
/// Pure, so the challenge's inline mode and the job agree by construction.
pub fn evaluate(input: &EvalInput) -> EvalOutput {
    EvalOutput {
        results: input
            .items
            .iter()
            .map(|item| EvalVerdict {
                id: item.id,
                correct: generate_tasks(item.seed, item.task_id.saturating_add(1))
                    .get(item.task_id as usize)
                    .is_some_and(|t| t.answer() == item.answer),
            })
            .collect(),
    }
}

/// The job's stdout (`truncated` when the broker cut it) turned into a
/// verdict per id of `expected`, or refused whole.
pub fn parse_result(
    stdout: &str,
    truncated: bool,
    expected: &[i64],
) -> Result<BTreeMap<i64, bool>, EvalError> {
    if truncated || stdout.len() > MAX_RESULT_BYTES {
        return Err(EvalError::TooLong(stdout.len()));
    }
    let line = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .ok_or(EvalError::Empty)?;
    let output: EvalOutput = serde_json::from_str(line).map_err(EvalError::Malformed)?;
    let wanted: BTreeSet<i64> = expected.iter().copied().collect();
    let mut verdicts = BTreeMap::new();
    for v in output.results {
        if !wanted.contains(&v.id) {
            return Err(EvalError::Mismatch(format!("unknown id {}", v.id)));
        }
        if verdicts.insert(v.id, v.correct).is_some() {
            return Err(EvalError::Mismatch(format!("id {} twice", v.id)));
        }
    }
    if verdicts.len() != wanted.len() {
        return Err(EvalError::Mismatch(format!(
            "{} verdicts for {} submissions",
            verdicts.len(),
            wanted.len()
        )));
    }
    Ok(verdicts)
}

/// The evaluate mode of the binary: reads [`INPUT_ENV`] through `lookup`,
/// returns the result line to print, or why the input was refused.
pub fn evaluate_mode(lookup: impl Fn(&str) -> Option<String>) -> Result<String, EvalError> {
    let raw = lookup(INPUT_ENV).ok_or_else(|| EvalError::BadInput("not set".to_string()))?;
    let output = evaluate(&parse_input(&raw)?);
    serde_json::to_string(&output).map_err(|e| EvalError::BadInput(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // The job runs a miner's answer, so its stdout is hostile: whatever
        // it prints, an accepted result holds exactly one verdict per
        // submitted id, and a well-formed line is read back exactly.
        #[test]
        fn any_stdout_yields_exactly_the_expected_ids_or_an_error(
            stdout in ".{0,300}",
            expected in proptest::collection::btree_set(0i64..50, 0..6),
        ) {
            let expected: Vec<i64> = expected.into_iter().collect();
            if let Ok(map) = parse_result(&stdout, false, &expected) {
                prop_assert_eq!(map.keys().copied().collect::<Vec<_>>(), expected);
            }
        }

        #[test]
        fn a_well_formed_line_round_trips_and_extra_fields_are_refused(
            verdicts in proptest::collection::btree_map(0i64..1000, any::<bool>(), 1..8),
            noise in "[a-z ]{0,40}",
        ) {
            let results: Vec<_> = verdicts
                .iter()
                .map(|(id, c)| serde_json::json!({"id": id, "correct": c}))
                .collect();
            let line = serde_json::json!({"results": results}).to_string();
            let expected: Vec<i64> = verdicts.keys().copied().collect();
            let stdout = format!("{noise}\n{line}\n");
            prop_assert_eq!(parse_result(&stdout, false, &expected).unwrap(), verdicts.clone());
            prop_assert!(parse_result(&stdout, true, &expected).is_err());
            let extra = serde_json::json!({"results": results, "bonus": 1}).to_string();
            prop_assert!(parse_result(&extra, false, &expected).is_err());
        }
    }

    #[test]
    fn evaluate_checks_each_answer_against_its_round() {
        let tasks = generate_tasks(5, 4);
        let input = EvalInput {
            items: vec![
                EvalItem {
                    id: 1,
                    seed: 5,
                    task_id: 3,
                    answer: tasks[3].answer(),
                },
                EvalItem {
                    id: 2,
                    seed: 5,
                    task_id: 0,
                    answer: tasks[0].answer() + 1,
                },
            ],
        };
        let line = evaluate_mode(|_| Some(serde_json::to_string(&input).unwrap())).unwrap();
        let got = parse_result(&format!("log line\n{line}\n"), false, &[1, 2]).unwrap();
        assert_eq!(got, BTreeMap::from([(1, true), (2, false)]));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(evaluate_mode(|_| None).is_err());
        assert!(evaluate_mode(|_| Some("{\"items\":[],\"x\":1}".into())).is_err());
        let big = EvalInput {
            items: vec![
                EvalItem {
                    id: 0,
                    seed: 0,
                    task_id: 0,
                    answer: 0
                };
                MAX_BATCH + 1
            ],
        };
        assert!(evaluate_mode(|_| Some(serde_json::to_string(&big).unwrap())).is_err());
        let far = r#"{"items":[{"id":1,"seed":1,"task_id":4000000000,"answer":1}]}"#;
        assert!(evaluate_mode(|_| Some(far.into())).is_err());
    }
}
