//! The text exposition format 0.0.4 parser, with the reference's semantics (spec §4.4).
//!
//! The parser is a byte-at-a-time state machine with the same states, the same order of
//! checks and the same error texts as `expfmt.TextParser` in prometheus/common v0.37.0, the
//! version the reference Pushgateway 1.5.1 ships. Matching the reference's quirks matters:
//! a body that the reference accepts must be accepted here, and a body it refuses must be
//! refused with the same line number and message. Notable consequences:
//!
//! - every line, including the last, must end in `\n` (`\r\n` leaves a `\r` in the value);
//! - `# HELP`/`# TYPE` for `x_count`, `x_sum` (and `x_bucket`) attach to a declared summary
//!   (histogram) `x`, exactly like sample lines do;
//! - backslashes are silently dropped from a TYPE word and from text after a timestamp;
//! - `le="NaN"` / `quantile="NaN"` behave like a missing `le` / `quantile` label;
//! - summary and histogram counts are converted to `u64` the way Go does on amd64;
//! - a sample of a family declared `gauge_histogram` keeps its labels but gets no value
//!   (Go's parser records an error for it that the next read overwrites).

use std::collections::{HashMap, HashSet};

use crate::pb::{
    Bucket, Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType, Quantile, Untyped,
};

/// Why a text body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A syntax error: 400 `text format parsing error in line N: ...`; nothing is stored.
    #[error("text format parsing error in line {line}: {msg}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
}

/// Parses a text-format body into families sorted by name.
///
/// Metrics keep their order of first appearance; summary and histogram lines with the same
/// label set (apart from `quantile`/`le`) are folded into one metric. Families that end up
/// without samples (a lone `# TYPE` or `# HELP`) are dropped. A timestamp is kept in
/// `timestamp_ms`; refusing it is the caller's business.
pub fn parse(input: &[u8]) -> Result<Vec<MetricFamily>, ParseError> {
    let mut p = Parser::new(input);
    let mut state = State::StartOfLine;
    loop {
        let step = match state {
            State::StartOfLine => Ok(p.start_of_line()),
            State::StartComment => p.start_comment(),
            State::MetricName => p.reading_metric_name(),
            State::Labels => Ok(p.reading_labels()),
            State::LabelName => p.start_label_name(),
            State::LabelValue => p.start_label_value(),
            State::Value => p.reading_value(),
            State::Timestamp => p.start_timestamp(),
            State::Help => p.reading_help(),
            State::Type => p.reading_type(),
        };
        match step {
            Ok(Some(next)) => state = next,
            Ok(None) => break,
            Err(Stop::Eof) => return Err(p.error("unexpected end of input stream".to_owned())),
            Err(Stop::Syntax(msg)) => return Err(p.error(msg)),
        }
    }
    p.finish()
}

/// Go's `math.NaN()`: the bit pattern the reference stores for a parsed `NaN`.
const GO_NAN_BITS: u64 = 0x7FF8_0000_0000_0001;

/// The states of the machine; each names where the next byte is expected.
#[derive(Debug, Clone, Copy)]
enum State {
    StartOfLine,
    StartComment,
    MetricName,
    Labels,
    LabelName,
    LabelValue,
    Value,
    Timestamp,
    Help,
    Type,
}

/// Why the machine stopped early.
enum Stop {
    /// The input ended where more was needed.
    Eof,
    /// A syntax error with its message (the line number is the parser's current line).
    Syntax(String),
}

type Step = Result<Option<State>, Stop>;

/// Which keyword a `# HELP` / `# TYPE` line carries.
#[derive(Clone, Copy)]
enum Keyword {
    Help,
    Type,
}

/// A family under construction.
struct Family {
    name: String,
    /// Raw (unescaped) HELP bytes; UTF-8 is checked once parsing has succeeded.
    help: Option<Vec<u8>>,
    typ: Option<MetricType>,
    metrics: Vec<Metric>,
    /// Summaries and histograms: sorted label set (without `quantile`/`le`) → metric index.
    series: HashMap<Vec<(String, String)>, usize>,
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    /// The most recently read byte.
    cur: u8,
    /// 1-based number of the line being parsed.
    line: usize,
    /// Scratch buffer for the token being read.
    token: Vec<u8>,
    families: Vec<Family>,
    by_name: HashMap<Vec<u8>, usize>,
    /// Index of the current family in `families`.
    mf: usize,
    /// The metric of the sample line being read, until its value is reached.
    pending: Metric,
    /// Label names of `pending`, for the duplicate check.
    pending_names: HashSet<String>,
    /// The label name just read was already present in `pending`.
    pending_dup: bool,
    /// Index of the current metric in the current family, once its value is reached.
    metric_idx: usize,
    /// The label name being read and whether it went into `pending`'s labels.
    label_name: String,
    label_kept: bool,
    /// Summaries/histograms: labels other than `quantile`/`le` of the current line.
    current_labels: Vec<(String, String)>,
    current_quantile: f64,
    current_bucket: f64,
    is_summary_count: bool,
    is_summary_sum: bool,
    is_histogram_count: bool,
    is_histogram_sum: bool,
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8]) -> Self {
        Parser {
            input,
            pos: 0,
            cur: 0,
            line: 0,
            token: Vec::new(),
            families: Vec::new(),
            by_name: HashMap::new(),
            mf: 0,
            pending: Metric::default(),
            pending_names: HashSet::new(),
            pending_dup: false,
            metric_idx: 0,
            label_name: String::new(),
            label_kept: false,
            current_labels: Vec::new(),
            current_quantile: f64::NAN,
            current_bucket: f64::NAN,
            is_summary_count: false,
            is_summary_sum: false,
            is_histogram_count: false,
            is_histogram_sum: false,
        }
    }

    fn error(&self, msg: String) -> ParseError {
        ParseError::Syntax {
            line: self.line,
            msg,
        }
    }

    /// Reads the next byte into `cur`.
    fn read(&mut self) -> Result<(), Stop> {
        match self.input.get(self.pos) {
            Some(&b) => {
                self.cur = b;
                self.pos += 1;
                Ok(())
            }
            None => {
                self.cur = 0;
                Err(Stop::Eof)
            }
        }
    }

    /// Reads until `cur` is neither a blank nor a tab.
    fn skip_blank_tab(&mut self) -> Result<(), Stop> {
        loop {
            self.read()?;
            if !is_blank_or_tab(self.cur) {
                return Ok(());
            }
        }
    }

    fn skip_blank_tab_if_current_blank_tab(&mut self) -> Result<(), Stop> {
        if is_blank_or_tab(self.cur) {
            self.skip_blank_tab()
        } else {
            Ok(())
        }
    }

    /// Token from `cur` up to (excluding) the first blank, tab or newline.
    fn read_token_until_whitespace(&mut self) -> Result<(), Stop> {
        self.token.clear();
        while !is_blank_or_tab(self.cur) && self.cur != b'\n' {
            self.token.push(self.cur);
            self.read()?;
        }
        Ok(())
    }

    /// Token from `cur` up to (excluding) the newline. With `escapes`, `\\` and `\n` are
    /// unescaped and any other escape is an error; without, backslashes are dropped (as the
    /// reference does).
    fn read_token_until_newline(&mut self, escapes: bool) -> Result<(), Stop> {
        self.token.clear();
        let mut escaped = false;
        loop {
            if escapes && escaped {
                match self.cur {
                    b'\\' => self.token.push(b'\\'),
                    b'n' => self.token.push(b'\n'),
                    other => {
                        return Err(Stop::Syntax(format!(
                            "invalid escape sequence '\\{}'",
                            char::from(other)
                        )));
                    }
                }
                escaped = false;
            } else {
                match self.cur {
                    b'\n' => return Ok(()),
                    b'\\' => escaped = true,
                    other => self.token.push(other),
                }
            }
            self.read()?;
        }
    }

    /// Metric name starting at `cur`; empty if `cur` cannot start one.
    fn read_token_as_metric_name(&mut self) -> Result<(), Stop> {
        self.token.clear();
        if !is_metric_name_start(self.cur) {
            return Ok(());
        }
        loop {
            self.token.push(self.cur);
            self.read()?;
            if !is_metric_name_continuation(self.cur) {
                return Ok(());
            }
        }
    }

    /// Label name starting at `cur`; empty if `cur` cannot start one.
    fn read_token_as_label_name(&mut self) -> Result<(), Stop> {
        self.token.clear();
        if !is_label_name_start(self.cur) {
            return Ok(());
        }
        loop {
            self.token.push(self.cur);
            self.read()?;
            if !is_label_name_continuation(self.cur) {
                return Ok(());
            }
        }
    }

    /// Quoted label value; `cur` is the opening quote. Leaves the closing quote in `cur`.
    fn read_token_as_label_value(&mut self) -> Result<(), Stop> {
        self.token.clear();
        let mut escaped = false;
        loop {
            self.read()?;
            if escaped {
                match self.cur {
                    b'"' | b'\\' => self.token.push(self.cur),
                    b'n' => self.token.push(b'\n'),
                    other => {
                        return Err(Stop::Syntax(format!(
                            "invalid escape sequence '\\{}'",
                            char::from(other)
                        )));
                    }
                }
                escaped = false;
                continue;
            }
            match self.cur {
                b'"' => return Ok(()),
                b'\n' => {
                    return Err(Stop::Syntax(format!(
                        "label value {} contains unescaped new-line",
                        go_quote(&self.token)
                    )));
                }
                b'\\' => escaped = true,
                other => self.token.push(other),
            }
        }
    }

    fn family(&self) -> Option<&Family> {
        self.families.get(self.mf)
    }

    fn family_mut(&mut self) -> Option<&mut Family> {
        self.families.get_mut(self.mf)
    }

    fn family_type(&self) -> Option<MetricType> {
        self.family().and_then(|f| f.typ)
    }

    fn family_name_quoted(&self) -> String {
        go_quote(self.family().map_or(&b""[..], |f| f.name.as_bytes()))
    }

    /// Makes the family named by `token` current, creating it if needed. A name ending in
    /// `_count`/`_sum` (`_bucket`) resolves to a declared summary (histogram) of the base name.
    fn set_or_create_current_mf(&mut self) {
        self.is_summary_count = false;
        self.is_summary_sum = false;
        self.is_histogram_count = false;
        self.is_histogram_sum = false;
        let name = self.token.as_slice();
        if let Some(&i) = self.by_name.get(name) {
            self.mf = i;
            return;
        }
        let is_count = has_suffix(name, b"_count");
        let is_sum = has_suffix(name, b"_sum");
        let is_bucket = has_suffix(name, b"_bucket");
        let base = |suffix_len: usize| {
            name.len()
                .checked_sub(suffix_len)
                .and_then(|n| name.get(..n))
        };
        let summary_base = if is_count {
            base(6)
        } else if is_sum {
            base(4)
        } else {
            None
        };
        if let Some(&i) = summary_base.and_then(|b| self.by_name.get(b))
            && self.families.get(i).and_then(|f| f.typ) == Some(MetricType::Summary)
        {
            self.mf = i;
            self.is_summary_count = is_count;
            self.is_summary_sum = is_sum;
            return;
        }
        let histogram_base = if is_bucket { base(7) } else { summary_base };
        if let Some(&i) = histogram_base.and_then(|b| self.by_name.get(b))
            && self.families.get(i).and_then(|f| f.typ) == Some(MetricType::Histogram)
        {
            self.mf = i;
            self.is_histogram_count = is_count;
            self.is_histogram_sum = is_sum;
            return;
        }
        let i = self.families.len();
        self.families.push(Family {
            // Metric names are ASCII by construction.
            name: String::from_utf8_lossy(name).into_owned(),
            help: None,
            typ: None,
            metrics: Vec::new(),
            series: HashMap::new(),
        });
        self.by_name.insert(name.to_vec(), i);
        self.mf = i;
    }

    fn start_of_line(&mut self) -> Option<State> {
        self.line += 1;
        if self.skip_blank_tab().is_err() {
            // The only place where the end of the input is the regular end.
            return None;
        }
        Some(match self.cur {
            b'#' => State::StartComment,
            b'\n' => State::StartOfLine,
            _ => State::MetricName,
        })
    }

    fn start_comment(&mut self) -> Step {
        self.skip_blank_tab()?;
        if self.cur == b'\n' {
            return Ok(Some(State::StartOfLine));
        }
        self.read_token_until_whitespace()?;
        if self.cur == b'\n' {
            return Ok(Some(State::StartOfLine));
        }
        let keyword = match self.token.as_slice() {
            b"HELP" => Keyword::Help,
            b"TYPE" => Keyword::Type,
            _ => {
                // A plain comment: skip to the end of the line.
                while self.cur != b'\n' {
                    self.read()?;
                }
                return Ok(Some(State::StartOfLine));
            }
        };
        self.skip_blank_tab()?;
        self.read_token_as_metric_name()?;
        if self.cur == b'\n' {
            return Ok(Some(State::StartOfLine));
        }
        if !is_blank_or_tab(self.cur) {
            return Err(Stop::Syntax("invalid metric name in comment".to_owned()));
        }
        self.set_or_create_current_mf();
        self.skip_blank_tab()?;
        if self.cur == b'\n' {
            return Ok(Some(State::StartOfLine));
        }
        Ok(Some(match keyword {
            Keyword::Help => State::Help,
            Keyword::Type => State::Type,
        }))
    }

    fn reading_metric_name(&mut self) -> Step {
        self.read_token_as_metric_name()?;
        if self.token.is_empty() {
            return Err(Stop::Syntax("invalid metric name".to_owned()));
        }
        self.set_or_create_current_mf();
        if let Some(f) = self.family_mut() {
            f.typ.get_or_insert(MetricType::Untyped);
        }
        self.pending = Metric::default();
        self.pending_names.clear();
        self.skip_blank_tab_if_current_blank_tab()?;
        Ok(Some(State::Labels))
    }

    fn reading_labels(&mut self) -> Option<State> {
        if matches!(
            self.family_type(),
            Some(MetricType::Summary | MetricType::Histogram)
        ) {
            self.current_labels.clear();
            self.current_quantile = f64::NAN;
            self.current_bucket = f64::NAN;
        }
        Some(if self.cur == b'{' {
            State::LabelName
        } else {
            State::Value
        })
    }

    fn start_label_name(&mut self) -> Step {
        self.skip_blank_tab()?;
        if self.cur == b'}' {
            self.skip_blank_tab()?;
            return Ok(Some(State::Value));
        }
        self.read_token_as_label_name()?;
        if self.token.is_empty() {
            return Err(Stop::Syntax(format!(
                "invalid label name for metric {}",
                self.family_name_quoted()
            )));
        }
        // Label names are ASCII by construction.
        let name = String::from_utf8_lossy(&self.token).into_owned();
        if name == "__name__" {
            return Err(Stop::Syntax(
                "label name \"__name__\" is reserved".to_owned(),
            ));
        }
        let typ = self.family_type();
        // `quantile` of a summary and `le` of a histogram are not labels of the metric.
        let is_quantile = typ == Some(MetricType::Summary) && name == "quantile";
        let is_le = typ == Some(MetricType::Histogram) && name == "le";
        self.label_kept = !is_quantile && !is_le;
        self.pending_dup = false;
        if self.label_kept {
            self.pending_dup = !self.pending_names.insert(name.clone());
            self.pending.label.push(LabelPair {
                name: Some(name.clone()),
                value: None,
            });
        }
        self.label_name = name;
        self.skip_blank_tab_if_current_blank_tab()?;
        if self.cur != b'=' {
            return Err(Stop::Syntax(format!(
                "expected '=' after label name, found {}",
                go_quote_rune(char::from(self.cur))
            )));
        }
        if self.pending_dup {
            return Err(Stop::Syntax(format!(
                "duplicate label names for metric {}",
                self.family_name_quoted()
            )));
        }
        Ok(Some(State::LabelValue))
    }

    fn start_label_value(&mut self) -> Step {
        self.skip_blank_tab()?;
        if self.cur != b'"' {
            return Err(Stop::Syntax(format!(
                "expected '\"' at start of label value, found {}",
                go_quote_rune(char::from(self.cur))
            )));
        }
        self.read_token_as_label_value()?;
        let value = match std::str::from_utf8(&self.token) {
            Ok(v) => v.to_owned(),
            Err(_) => {
                return Err(Stop::Syntax(format!(
                    "invalid label value {}",
                    go_quote(&self.token)
                )));
            }
        };
        if self.label_kept
            && let Some(pair) = self.pending.label.last_mut()
        {
            pair.value = Some(value.clone());
        }
        match self.family_type() {
            Some(MetricType::Summary) => {
                if self.label_name == "quantile" {
                    self.current_quantile = parse_go_float(value.as_bytes()).ok_or_else(|| {
                        Stop::Syntax(format!(
                            "expected float as value for 'quantile' label, got {}",
                            go_quote(value.as_bytes())
                        ))
                    })?;
                } else {
                    self.current_labels
                        .push((self.label_name.clone(), value.clone()));
                }
            }
            Some(MetricType::Histogram) => {
                if self.label_name == "le" {
                    self.current_bucket = parse_go_float(value.as_bytes()).ok_or_else(|| {
                        Stop::Syntax(format!(
                            "expected float as value for 'le' label, got {}",
                            go_quote(value.as_bytes())
                        ))
                    })?;
                } else {
                    self.current_labels
                        .push((self.label_name.clone(), value.clone()));
                }
            }
            _ => {}
        }
        self.skip_blank_tab()?;
        match self.cur {
            b',' => Ok(Some(State::LabelName)),
            b'}' => {
                self.skip_blank_tab()?;
                Ok(Some(State::Value))
            }
            _ => Err(Stop::Syntax(format!(
                "unexpected end of label value {}",
                go_quote(value.as_bytes())
            ))),
        }
    }

    fn reading_value(&mut self) -> Step {
        let typ = self.family_type();
        let pending = std::mem::take(&mut self.pending);
        let folded = matches!(typ, Some(MetricType::Summary | MetricType::Histogram));
        let mut key = Vec::new();
        if folded {
            key = std::mem::take(&mut self.current_labels);
            key.sort();
        }
        let Some(family) = self.families.get_mut(self.mf) else {
            return Err(Stop::Syntax(
                "internal error: no current metric family".to_owned(),
            ));
        };
        self.metric_idx = match folded.then(|| family.series.get(&key).copied()).flatten() {
            Some(i) => i,
            None => {
                let i = family.metrics.len();
                if folded {
                    family.series.insert(key, i);
                }
                family.metrics.push(pending);
                i
            }
        };
        self.read_token_until_whitespace()?;
        let Some(value) = parse_go_float(&self.token) else {
            return Err(Stop::Syntax(format!(
                "expected float as value, got {}",
                go_quote(&self.token)
            )));
        };
        let (quantile, bucket) = (self.current_quantile, self.current_bucket);
        let (s_count, s_sum) = (self.is_summary_count, self.is_summary_sum);
        let (h_count, h_sum) = (self.is_histogram_count, self.is_histogram_sum);
        let idx = self.metric_idx;
        if let Some(metric) = self
            .families
            .get_mut(self.mf)
            .and_then(|f| f.metrics.get_mut(idx))
        {
            match typ {
                Some(MetricType::Counter) => {
                    metric.counter = Some(Counter {
                        value: Some(value),
                        ..Default::default()
                    });
                }
                Some(MetricType::Gauge) => metric.gauge = Some(Gauge { value: Some(value) }),
                Some(MetricType::Untyped) => {
                    metric.untyped = Some(Untyped { value: Some(value) });
                }
                Some(MetricType::Summary) => {
                    let summary = metric.summary.get_or_insert_with(Default::default);
                    if s_count {
                        summary.sample_count = Some(go_f64_to_u64(value));
                    } else if s_sum {
                        summary.sample_sum = Some(value);
                    } else if !quantile.is_nan() {
                        summary.quantile.push(Quantile {
                            quantile: Some(quantile),
                            value: Some(value),
                        });
                    }
                }
                Some(MetricType::Histogram) => {
                    let histogram = metric.histogram.get_or_insert_with(Default::default);
                    if h_count {
                        histogram.sample_count = Some(go_f64_to_u64(value));
                    } else if h_sum {
                        histogram.sample_sum = Some(value);
                    } else if !bucket.is_nan() {
                        histogram.bucket.push(Bucket {
                            upper_bound: Some(bucket),
                            cumulative_count: Some(go_f64_to_u64(value)),
                            ..Default::default()
                        });
                    }
                }
                // `gauge_histogram` (and an unset type, which cannot happen here): the
                // reference records an error that the next read overwrites, so the sample is
                // kept without a value.
                Some(MetricType::GaugeHistogram) | None => {}
            }
        }
        if self.cur == b'\n' {
            Ok(Some(State::StartOfLine))
        } else {
            Ok(Some(State::Timestamp))
        }
    }

    fn start_timestamp(&mut self) -> Step {
        self.skip_blank_tab()?;
        self.read_token_until_whitespace()?;
        let Some(ts) = std::str::from_utf8(&self.token)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        else {
            return Err(Stop::Syntax(format!(
                "expected integer as timestamp, got {}",
                go_quote(&self.token)
            )));
        };
        let idx = self.metric_idx;
        if let Some(metric) = self
            .families
            .get_mut(self.mf)
            .and_then(|f| f.metrics.get_mut(idx))
        {
            metric.timestamp_ms = Some(ts);
        }
        self.read_token_until_newline(false)?;
        if !self.token.is_empty() {
            return Err(Stop::Syntax(format!(
                "spurious string after timestamp: {}",
                go_quote(&self.token)
            )));
        }
        Ok(Some(State::StartOfLine))
    }

    fn reading_help(&mut self) -> Step {
        if self.family().is_some_and(|f| f.help.is_some()) {
            return Err(Stop::Syntax(format!(
                "second HELP line for metric name {}",
                self.family_name_quoted()
            )));
        }
        self.read_token_until_newline(true)?;
        let help = self.token.clone();
        if let Some(f) = self.family_mut() {
            f.help = Some(help);
        }
        Ok(Some(State::StartOfLine))
    }

    fn reading_type(&mut self) -> Step {
        if self.family().is_some_and(|f| f.typ.is_some()) {
            return Err(Stop::Syntax(format!(
                "second TYPE line for metric name {}, or TYPE reported after samples",
                self.family_name_quoted()
            )));
        }
        self.read_token_until_newline(false)?;
        let Some(typ) = metric_type_from_word(&self.token) else {
            return Err(Stop::Syntax(format!(
                "unknown metric type {}",
                go_quote(&self.token)
            )));
        };
        if let Some(f) = self.family_mut() {
            f.typ = Some(typ);
        }
        Ok(Some(State::StartOfLine))
    }

    /// Drops empty families, sorts by name and converts to the protobuf types.
    fn finish(self) -> Result<Vec<MetricFamily>, ParseError> {
        let mut families: Vec<Family> = self
            .families
            .into_iter()
            .filter(|f| !f.metrics.is_empty())
            .collect();
        families.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = Vec::with_capacity(families.len());
        for f in families {
            // The reference accepts HELP bytes that are not UTF-8 and serves them back raw;
            // pgw keeps such a push too, with each invalid sequence replaced by U+FFFD.
            let help = f
                .help
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
            out.push(MetricFamily {
                name: Some(f.name),
                help,
                r#type: Some(f.typ.unwrap_or(MetricType::Untyped) as i32),
                metric: f.metrics,
                unit: None,
            });
        }
        Ok(out)
    }
}

fn is_blank_or_tab(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_label_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_label_name_continuation(b: u8) -> bool {
    is_label_name_start(b) || b.is_ascii_digit()
}

fn is_metric_name_start(b: u8) -> bool {
    is_label_name_start(b) || b == b':'
}

fn is_metric_name_continuation(b: u8) -> bool {
    is_label_name_continuation(b) || b == b':'
}

/// `name` ends in `suffix` and is longer than it.
fn has_suffix(name: &[u8], suffix: &[u8]) -> bool {
    name.len() > suffix.len() && name.ends_with(suffix)
}

/// The TYPE word, upper-cased per character as Go's `strings.ToUpper` does, looked up in the
/// `MetricType` names of client_model v0.3.0 (which include `GAUGE_HISTOGRAM`).
fn metric_type_from_word(word: &[u8]) -> Option<MetricType> {
    let upper: String = String::from_utf8_lossy(word)
        .chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect();
    match upper.as_str() {
        "COUNTER" => Some(MetricType::Counter),
        "GAUGE" => Some(MetricType::Gauge),
        "SUMMARY" => Some(MetricType::Summary),
        "UNTYPED" => Some(MetricType::Untyped),
        "HISTOGRAM" => Some(MetricType::Histogram),
        "GAUGE_HISTOGRAM" => Some(MetricType::GaugeHistogram),
        _ => None,
    }
}

/// Go's `strconv.ParseFloat(s, 64)` as the text parser calls it: anything containing `p`,
/// `P` or `_` is refused up front (so no hex floats and no digit separators); `NaN` and
/// `Inf`/`Infinity` (any case, the latter signed) are accepted; out-of-range values are an
/// error while underflow gives zero.
pub(crate) fn parse_go_float(s: &[u8]) -> Option<f64> {
    if s.iter().any(|&b| matches!(b, b'p' | b'P' | b'_')) {
        return None;
    }
    // Special values.
    let (negative, unsigned) = match s.first() {
        Some(b'+') => (false, s.get(1..).unwrap_or_default()),
        Some(b'-') => (true, s.get(1..).unwrap_or_default()),
        _ => (false, s),
    };
    if unsigned.eq_ignore_ascii_case(b"inf") || unsigned.eq_ignore_ascii_case(b"infinity") {
        return Some(if negative {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if s.eq_ignore_ascii_case(b"nan") {
        return Some(f64::from_bits(GO_NAN_BITS));
    }
    // Decimal: [+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?
    let mut i = usize::from(unsigned.len() != s.len());
    let mut saw_digits = false;
    let mut saw_dot = false;
    while let Some(&c) = s.get(i) {
        match c {
            b'0'..=b'9' => saw_digits = true,
            b'.' if !saw_dot => saw_dot = true,
            _ => break,
        }
        i += 1;
    }
    if !saw_digits {
        return None;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !matches!(s.get(i), Some(b'0'..=b'9')) {
            return None;
        }
        while matches!(s.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
    }
    if i != s.len() {
        return None;
    }
    let v: f64 = std::str::from_utf8(s).ok()?.parse().ok()?;
    // Go reports overflow (±Inf from a finite spelling) as a range error.
    if v.is_infinite() { None } else { Some(v) }
}

/// Go's `uint64(f)` for a float64 on amd64, as the reference converts summary and histogram
/// counts: values below 2^63 truncate through a signed conversion (so `-1` wraps to
/// 2^64-1), larger ones subtract 2^63 first; NaN, ±Inf and anything out of range give the
/// "integer indefinite" 2^63.
pub(crate) fn go_f64_to_u64(f: f64) -> u64 {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    const HIGH: u64 = 1 << 63;
    if f.is_nan() {
        HIGH
    } else if f < TWO_63 {
        // Saturates to i64::MIN below -2^63, which is the indefinite value.
        (f as i64) as u64
    } else {
        let y = f - TWO_63;
        if y < TWO_63 {
            ((y as i64) as u64) | HIGH
        } else {
            HIGH
        }
    }
}

/// Go's `unicode.IsPrint`, closely approximated: letters, marks, numbers, punctuation,
/// symbols and the ASCII space.
fn go_is_print(c: char) -> bool {
    let u = u32::from(c);
    if u < 0x80 {
        return (0x20..0x7f).contains(&u);
    }
    if u <= 0xff {
        return u >= 0xa1 && u != 0xad;
    }
    // Rust's debug escaping keeps exactly the printable characters (outside the first
    // position, grapheme extenders are kept too, as Go keeps marks).
    let probe: String = ['a', c].iter().collect();
    probe.escape_debug().eq(probe.chars())
}

/// Appends `c` escaped as Go's `strconv.Quote` family does inside `quote` delimiters.
fn push_go_escaped(out: &mut String, c: char, quote: char) {
    use std::fmt::Write as _;
    if c == quote || c == '\\' {
        out.push('\\');
        out.push(c);
        return;
    }
    if go_is_print(c) {
        out.push(c);
        return;
    }
    let u = u32::from(c);
    let _ = match c {
        '\x07' => out.write_str("\\a"),
        '\x08' => out.write_str("\\b"),
        '\x0c' => out.write_str("\\f"),
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        '\x0b' => out.write_str("\\v"),
        _ if u < 0x20 || u == 0x7f => write!(out, "\\x{u:02x}"),
        _ if u < 0x10000 => write!(out, "\\u{u:04x}"),
        _ => write!(out, "\\U{u:08x}"),
    };
}

/// Go's `%q` of a string (`strconv.Quote`): bytes that are not UTF-8 become `\xNN`.
pub(crate) fn go_quote(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_go_escaped(&mut out, c, '"');
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out.push('"');
    out
}

/// Go's `%q` of a byte (`strconv.QuoteRune(rune(b))`), e.g. `'x'`, `'\n'`, `'\u0080'`.
fn go_quote_rune(c: char) -> String {
    let mut out = String::with_capacity(4);
    out.push('\'');
    push_go_escaped(&mut out, c, '\'');
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::Histogram;
    use proptest::prelude::*;

    fn ok(input: &str) -> Vec<MetricFamily> {
        match parse(input.as_bytes()) {
            Ok(f) => f,
            Err(e) => panic!("unexpected error for {input:?}: {e}"),
        }
    }

    fn err(input: &[u8]) -> String {
        match parse(input) {
            Ok(f) => panic!("expected an error for {input:?}, got {f:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn syntax(input: &str, line: usize, msg: &str) {
        assert_eq!(
            parse(input.as_bytes()),
            Err(ParseError::Syntax {
                line,
                msg: msg.to_owned()
            }),
            "input {input:?}"
        );
    }

    fn labels(m: &Metric) -> Vec<(String, String)> {
        m.label
            .iter()
            .map(|l| {
                (
                    l.name.clone().unwrap_or_default(),
                    l.value.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    fn untyped(m: &Metric) -> f64 {
        m.untyped.as_ref().and_then(|u| u.value).unwrap_or(-12345.0)
    }

    fn single_value(input: &str) -> f64 {
        let f = ok(input);
        assert_eq!(f.len(), 1);
        untyped(&f[0].metric[0])
    }

    // ---- lines, blanks, comments ------------------------------------------------------

    #[test]
    fn empty_and_blank_inputs() {
        assert!(ok("").is_empty());
        assert!(ok("\n\n").is_empty());
        assert!(ok("   \t ").is_empty());
        assert!(ok("  \n\t\n   ").is_empty());
        assert!(ok("# just a comment\n").is_empty());
    }

    #[test]
    fn last_line_needs_newline() {
        syntax("m 1", 1, "unexpected end of input stream");
        syntax("a 1\nm 1", 2, "unexpected end of input stream");
        syntax("m", 1, "unexpected end of input stream");
        syntax("m{a=\"b\"", 1, "unexpected end of input stream");
        syntax("m{a=\"b", 1, "unexpected end of input stream");
        syntax("# HELP m text", 1, "unexpected end of input stream");
        syntax("# TYPE m counter", 1, "unexpected end of input stream");
        syntax("# some comment", 1, "unexpected end of input stream");
        syntax("# EOF", 1, "unexpected end of input stream");
        syntax("m 1 123", 1, "unexpected end of input stream");
        syntax("#", 1, "unexpected end of input stream");
    }

    #[test]
    fn crlf_is_refused() {
        syntax("m 1\r\n", 1, "expected float as value, got \"1\\r\"");
        syntax(
            "m 1 2\r\n",
            1,
            "expected integer as timestamp, got \"2\\r\"",
        );
    }

    #[test]
    fn comments_are_ignored() {
        let f = ok(
            "# UNIT m seconds\n#\n#   \n# HELP\n# TYPE\n# HELP   \n# TYPE m\n\
                    #foo bar baz\n# EOF\nm 1\n# EOF\n",
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].help, None);
        assert_eq!(f[0].r#type, Some(MetricType::Untyped as i32));
    }

    #[test]
    fn openmetrics_eof_marker_is_accepted() {
        let f = ok("# TYPE a counter\na_total 1\n# EOF\n");
        assert_eq!(f[0].name.as_deref(), Some("a_total"));
    }

    #[test]
    fn invalid_metric_name_in_comment() {
        syntax("# HELP 1m x\n", 1, "invalid metric name in comment");
        syntax("# TYPE m-x counter\n", 1, "invalid metric name in comment");
        syntax("# HELP m\"x\n", 1, "invalid metric name in comment");
    }

    #[test]
    fn help_and_type_without_text_are_ignored() {
        let f = ok("# HELP m   \n# TYPE m \nm 1\n");
        assert_eq!(f[0].help, None);
        assert_eq!(f[0].r#type, Some(MetricType::Untyped as i32));
        let f = ok("# HELP m\n# TYPE m\nm 1\n");
        assert_eq!(f[0].help, None);
    }

    #[test]
    fn line_numbers_count_every_line() {
        syntax(
            "\n\n# c\n  \nm{} x\n",
            5,
            "expected float as value, got \"x\"",
        );
        syntax("a 1\n\nb 2\nc\t\n", 4, "expected float as value, got \"\"");
    }

    // ---- HELP -------------------------------------------------------------------------

    #[test]
    fn help_is_set_and_unescaped() {
        let f = ok("# HELP m  some \\\\ text\\nmore  \nm 1\n");
        assert_eq!(f[0].help.as_deref(), Some("some \\ text\nmore  "));
        let f = ok("# HELP   m\ttab\tinside\nm 1\n");
        assert_eq!(f[0].help.as_deref(), Some("tab\tinside"));
    }

    #[test]
    fn help_invalid_escapes() {
        syntax("# HELP m a \\\"b\n", 1, "invalid escape sequence '\\\"'");
        syntax("# HELP m a \\t\n", 1, "invalid escape sequence '\\t'");
        syntax("# HELP m a \\\n", 1, "invalid escape sequence '\\\n'");
    }

    #[test]
    fn second_help() {
        syntax(
            "# HELP m a\n# HELP m b\nm 1\n",
            2,
            "second HELP line for metric name \"m\"",
        );
        // Also after samples, and for an empty first HELP? No: a HELP without text is ignored.
        let f = ok("# HELP m \n# HELP m b\nm 1\n");
        assert_eq!(f[0].help.as_deref(), Some("b"));
    }

    #[test]
    fn help_after_samples_is_fine() {
        let f = ok("m 1\n# HELP m late\n");
        assert_eq!(f[0].help.as_deref(), Some("late"));
    }

    #[test]
    fn help_of_dropped_family_is_ignored() {
        let f = ok("# HELP x hello\n# TYPE y gauge\nm 1\n");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].name.as_deref(), Some("m"));
    }

    #[test]
    fn help_not_utf8() {
        let f = parse(b"# HELP m a\xffb\nm 1\n").expect("accepted as upstream");
        assert_eq!(f[0].help.as_deref(), Some("a\u{fffd}b"));
        // A syntax error later in the body wins.
        assert!(matches!(
            parse(b"# HELP m a\xffb\nm 1\nm x\n"),
            Err(ParseError::Syntax { line: 3, .. })
        ));
        // Non-UTF-8 HELP of a family without samples is dropped with the family.
        assert!(parse(b"# HELP z a\xffb\nm 1\n").is_ok());
    }

    #[test]
    fn empty_help_via_escaped_nothing() {
        // HELP text consisting of an escaped newline only.
        let f = ok("# HELP m \\n\nm 1\n");
        assert_eq!(f[0].help.as_deref(), Some("\n"));
    }

    // ---- TYPE -------------------------------------------------------------------------

    #[test]
    fn types_are_case_insensitive() {
        for (word, t) in [
            ("counter", MetricType::Counter),
            ("GAUGE", MetricType::Gauge),
            ("Untyped", MetricType::Untyped),
            ("summary", MetricType::Summary),
            ("histogram", MetricType::Histogram),
            ("ſummary", MetricType::Summary),
        ] {
            let f = ok(&format!("# TYPE m {word}\nm 1\n"));
            assert_eq!(f[0].r#type, Some(t as i32), "{word}");
        }
    }

    #[test]
    fn type_word_drops_backslashes() {
        let f = ok("# TYPE m cou\\nter\nm 1\n");
        assert_eq!(f[0].r#type, Some(MetricType::Counter as i32));
    }

    #[test]
    fn unknown_type() {
        syntax("# TYPE m foo\n", 1, "unknown metric type \"foo\"");
        syntax(
            "# TYPE m gaugehistogram\n",
            1,
            "unknown metric type \"gaugehistogram\"",
        );
        syntax("# TYPE m counter \n", 1, "unknown metric type \"counter \"");
        syntax("# TYPE m info\n", 1, "unknown metric type \"info\"");
    }

    #[test]
    fn second_type() {
        syntax(
            "# TYPE m counter\n# TYPE m gauge\n",
            2,
            "second TYPE line for metric name \"m\", or TYPE reported after samples",
        );
        syntax(
            "m 1\n# TYPE m gauge\n",
            2,
            "second TYPE line for metric name \"m\", or TYPE reported after samples",
        );
    }

    #[test]
    fn gauge_histogram_samples_have_no_value() {
        let f = ok("# TYPE m gauge_histogram\nm{a=\"b\"} 1\nm 2 17\n");
        assert_eq!(f[0].r#type, Some(MetricType::GaugeHistogram as i32));
        assert_eq!(f[0].metric.len(), 2);
        assert_eq!(labels(&f[0].metric[0]), pairs(&[("a", "b")]));
        assert!(f[0].metric[0].gauge.is_none() && f[0].metric[0].histogram.is_none());
        assert_eq!(f[0].metric[1].timestamp_ms, Some(17));
        // The value must still be a float.
        syntax(
            "# TYPE m gauge_histogram\nm x\n",
            2,
            "expected float as value, got \"x\"",
        );
    }

    #[test]
    fn typed_values() {
        let f = ok("# TYPE c counter\n# TYPE g gauge\n# TYPE u untyped\nc 1\ng -2\nu 3\n");
        assert_eq!(
            f[0].metric[0].counter.as_ref().and_then(|c| c.value),
            Some(1.0)
        );
        assert_eq!(
            f[1].metric[0].gauge.as_ref().and_then(|c| c.value),
            Some(-2.0)
        );
        assert_eq!(
            f[2].metric[0].untyped.as_ref().and_then(|c| c.value),
            Some(3.0)
        );
        assert_eq!(f[0].r#type, Some(MetricType::Counter as i32));
        assert_eq!(f[1].r#type, Some(MetricType::Gauge as i32));
        assert_eq!(f[2].r#type, Some(MetricType::Untyped as i32));
        assert!(f[0].metric[0].gauge.is_none() && f[0].metric[0].untyped.is_none());
    }

    // ---- names and labels -------------------------------------------------------------

    #[test]
    fn metric_names() {
        let f = ok("job:rate5m 1\n_x 2\nA_b9 3\n:x 4\n");
        let names: Vec<_> = f.iter().filter_map(|f| f.name.as_deref()).collect();
        assert_eq!(names, [":x", "A_b9", "_x", "job:rate5m"]);
        syntax("1m 1\n", 1, "invalid metric name");
        syntax("{a=\"b\"} 1\n", 1, "invalid metric name");
        syntax("é 1\n", 1, "invalid metric name");
        syntax("\"m\" 1\n", 1, "invalid metric name");
    }

    #[test]
    fn whitespace_tolerance() {
        let f = ok("  \t m  {  a = \"1\" ,\tb=\"2\" , } \t 5\n");
        assert_eq!(labels(&f[0].metric[0]), pairs(&[("a", "1"), ("b", "2")]));
        assert_eq!(untyped(&f[0].metric[0]), 5.0);
        let f = ok("m{} 1\nm{}2\nm{a=\"x\"}3\n");
        assert_eq!(f[0].metric.len(), 3);
        assert_eq!(untyped(&f[0].metric[1]), 2.0);
        assert_eq!(untyped(&f[0].metric[2]), 3.0);
    }

    #[test]
    fn name_directly_followed_by_value() {
        // The name ends at the first byte that cannot continue it.
        let f = ok("m-1 2\n");
        assert_eq!(untyped(&f[0].metric[0]), -1.0);
        assert_eq!(f[0].metric[0].timestamp_ms, Some(2));
    }

    #[test]
    fn label_name_errors() {
        syntax("m{1a=\"b\"} 1\n", 1, "invalid label name for metric \"m\"");
        syntax("m{,} 1\n", 1, "invalid label name for metric \"m\"");
        syntax("m{a=\"b\",,} 1\n", 1, "invalid label name for metric \"m\"");
        syntax(
            "m{a:b=\"c\"} 1\n",
            1,
            "expected '=' after label name, found ':'",
        );
        syntax(
            "m{a \"c\"} 1\n",
            1,
            "expected '=' after label name, found '\"'",
        );
        syntax("m{a\n", 1, "expected '=' after label name, found '\\n'");
        syntax(
            "m{a\x01=\"\"} 1\n",
            1,
            "expected '=' after label name, found '\\x01'",
        );
        syntax(
            "m{a\u{80}=\"\"} 1\n",
            1,
            "expected '=' after label name, found 'Â'",
        );
        syntax(
            "m{__name__=\"x\"} 1\n",
            1,
            "label name \"__name__\" is reserved",
        );
        syntax(
            "m{a=\"1\",a=\"2\"} 1\n",
            1,
            "duplicate label names for metric \"m\"",
        );
        syntax(
            "m{a=\"1\",b=\"\",a \"2\"} 1\n",
            1,
            "expected '=' after label name, found '\"'",
        );
    }

    #[test]
    fn double_underscore_labels_pass_the_parser() {
        let f = ok("m{__x=\"1\"} 1\n");
        assert_eq!(labels(&f[0].metric[0]), pairs(&[("__x", "1")]));
    }

    #[test]
    fn label_value_errors() {
        syntax(
            "m{a=b} 1\n",
            1,
            "expected '\"' at start of label value, found 'b'",
        );
        syntax(
            "m{a=} 1\n",
            1,
            "expected '\"' at start of label value, found '}'",
        );
        syntax("m{a=\"x\\t\"} 1\n", 1, "invalid escape sequence '\\t'");
        syntax("m{a=\"x\\'\"} 1\n", 1, "invalid escape sequence '\\''");
        syntax(
            "m{a=\"x\ny\"} 1\n",
            1,
            "label value \"x\" contains unescaped new-line",
        );
        syntax(
            "m{a=\"x\" b=\"y\"} 1\n",
            1,
            "unexpected end of label value \"x\"",
        );
        syntax("m{a=\"x\"\n", 1, "unexpected end of label value \"x\"");
        assert_eq!(
            err(b"m{a=\"x\xffy\"} 1\n"),
            "text format parsing error in line 1: invalid label value \"x\\xffy\""
        );
    }

    #[test]
    fn label_value_escapes() {
        let f = ok("m{a=\"q\\\"b\\\\s\\nn\",b=\"\",c=\"ü,}= {\"} 1\n");
        assert_eq!(
            labels(&f[0].metric[0]),
            pairs(&[("a", "q\"b\\s\nn"), ("b", ""), ("c", "ü,}= {")])
        );
    }

    #[test]
    fn labels_keep_their_order() {
        let f = ok("m{z=\"1\",a=\"2\"} 1\n");
        assert_eq!(labels(&f[0].metric[0]), pairs(&[("z", "1"), ("a", "2")]));
    }

    // ---- values and timestamps --------------------------------------------------------

    #[test]
    fn float_spellings() {
        for (s, v) in [
            ("1", 1.0),
            ("-1", -1.0),
            ("+3", 3.0),
            (".5", 0.5),
            ("5.", 5.0),
            ("1e3", 1000.0),
            ("1E+3", 1000.0),
            ("1.5e-3", 0.0015),
            ("007", 7.0),
            ("Inf", f64::INFINITY),
            ("+Inf", f64::INFINITY),
            ("-Inf", f64::NEG_INFINITY),
            ("inf", f64::INFINITY),
            ("INF", f64::INFINITY),
            ("Infinity", f64::INFINITY),
            ("-infinity", f64::NEG_INFINITY),
            ("1e-400", 0.0),
            ("1.7976931348623157e308", f64::MAX),
        ] {
            assert_eq!(single_value(&format!("m {s}\n")), v, "{s}");
        }
        for s in ["NaN", "nan", "NAN", "nAn"] {
            let v = single_value(&format!("m {s}\n"));
            assert_eq!(v.to_bits(), GO_NAN_BITS, "{s}");
        }
        let neg_zero = single_value("m -0\n");
        assert!(neg_zero == 0.0 && neg_zero.is_sign_negative());
    }

    #[test]
    fn float_refusals() {
        for s in [
            "+nan",
            "-NaN",
            "0x10",
            "0x1p3",
            "1e",
            "1e+",
            "1_000",
            "1p",
            ".",
            "+",
            "-",
            "e3",
            "1.2.3",
            "infin",
            "infx",
            "nanx",
            "1e308e",
            "2e308",
            "-2e308",
            "１",
            "1f",
            "--1",
            "+-1",
            "Infinityy",
            "0b1",
            "1,5",
        ] {
            assert_eq!(
                err(format!("m {s}\n").as_bytes()),
                format!(
                    "text format parsing error in line 1: expected float as value, got {}",
                    go_quote(s.as_bytes())
                ),
                "{s}"
            );
        }
    }

    #[test]
    fn timestamps() {
        let f = ok("m 1 1700000000000\nm 2 -5\nm 3 +7\nm 4\t8\n");
        let ts: Vec<_> = f[0].metric.iter().map(|m| m.timestamp_ms).collect();
        assert_eq!(ts, [Some(1_700_000_000_000), Some(-5), Some(7), Some(8)]);
        syntax("m 1 \n", 1, "expected integer as timestamp, got \"\"");
        syntax("m 1 1.5\n", 1, "expected integer as timestamp, got \"1.5\"");
        syntax("m 1 x\n", 1, "expected integer as timestamp, got \"x\"");
        syntax(
            "m 1 99999999999999999999\n",
            1,
            "expected integer as timestamp, got \"99999999999999999999\"",
        );
        syntax("m 1 2 \n", 1, "spurious string after timestamp: \" \"");
        syntax("m 1 2 3\n", 1, "spurious string after timestamp: \" 3\"");
        syntax(
            "m 1 2\tx\\y\n",
            1,
            "spurious string after timestamp: \"\\txy\"",
        );
    }

    #[test]
    fn no_timestamp_means_none() {
        let f = ok("m 1\n");
        assert_eq!(f[0].metric[0].timestamp_ms, None);
    }

    // ---- families ---------------------------------------------------------------------

    #[test]
    fn non_contiguous_samples_merge_and_sort() {
        let f = ok("b 1\na{x=\"1\"} 2\nb{y=\"2\"} 3\na 4\n");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name.as_deref(), Some("a"));
        assert_eq!(f[1].name.as_deref(), Some("b"));
        assert_eq!(
            f[0].metric.iter().map(untyped).collect::<Vec<_>>(),
            [2.0, 4.0]
        );
        assert_eq!(
            f[1].metric.iter().map(untyped).collect::<Vec<_>>(),
            [1.0, 3.0]
        );
    }

    #[test]
    fn duplicate_series_are_kept() {
        let f = ok("m{a=\"1\"} 1\nm{a=\"1\"} 2\n");
        assert_eq!(f[0].metric.len(), 2);
    }

    #[test]
    fn families_without_samples_are_dropped() {
        assert!(ok("# TYPE x gauge\n# HELP x y\n").is_empty());
        let f = ok("# TYPE s summary\n# TYPE h histogram\n# HELP z text\nq 1\n");
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn name_sort_is_bytewise() {
        let f = ok("b 1\nB 1\n_ 1\n: 1\na 1\n");
        let names: Vec<_> = f.iter().filter_map(|f| f.name.as_deref()).collect();
        assert_eq!(names, [":", "B", "_", "a", "b"]);
    }

    // ---- summaries and histograms -----------------------------------------------------

    #[test]
    fn summary_is_folded() {
        let f = ok("# HELP s help\n# TYPE s summary\n\
                    s{a=\"1\",quantile=\"0.5\"} 10\n\
                    s{quantile=\"0.9\", a=\"1\"} 20\n\
                    s{a=\"2\",quantile=\"0.5\"} 30\n\
                    s_sum{a=\"1\"} 100\n\
                    s_count{a=\"1\"} 7\n\
                    s_count{a=\"2\"} 3.9\n");
        assert_eq!(f.len(), 1);
        let s = &f[0];
        assert_eq!(s.r#type, Some(MetricType::Summary as i32));
        assert_eq!(s.help.as_deref(), Some("help"));
        assert_eq!(s.metric.len(), 2);
        assert_eq!(labels(&s.metric[0]), pairs(&[("a", "1")]));
        let sum0 = s.metric[0].summary.as_ref().unwrap();
        assert_eq!(
            sum0.quantile,
            vec![
                Quantile {
                    quantile: Some(0.5),
                    value: Some(10.0)
                },
                Quantile {
                    quantile: Some(0.9),
                    value: Some(20.0)
                }
            ]
        );
        assert_eq!(sum0.sample_sum, Some(100.0));
        assert_eq!(sum0.sample_count, Some(7));
        let sum1 = s.metric[1].summary.as_ref().unwrap();
        assert_eq!(sum1.sample_count, Some(3));
        assert_eq!(sum1.sample_sum, None);
        assert!(s.metric[0].untyped.is_none());
    }

    #[test]
    fn histogram_is_folded() {
        let f = ok("# TYPE h histogram\n\
                    h_bucket{le=\"0.1\"} 1\n\
                    h_bucket{le=\"+Inf\"} 3\n\
                    h_sum 2.5\n\
                    h_count 3\n\
                    h_bucket{x=\"y\",le=\"1\"} -1\n\
                    h_count{x=\"y\"} 1.5\n");
        let h = &f[0];
        assert_eq!(h.metric.len(), 2);
        let h0 = h.metric[0].histogram.as_ref().unwrap();
        assert_eq!(h0.sample_count, Some(3));
        assert_eq!(h0.sample_sum, Some(2.5));
        let buckets: Vec<_> = h0
            .bucket
            .iter()
            .map(|b| (b.upper_bound.unwrap(), b.cumulative_count.unwrap()))
            .collect();
        assert_eq!(buckets, [(0.1, 1), (f64::INFINITY, 3)]);
        let h1 = h.metric[1].histogram.as_ref().unwrap();
        assert_eq!(labels(&h.metric[1]), pairs(&[("x", "y")]));
        assert_eq!(h1.bucket[0].cumulative_count, Some(u64::MAX));
        assert_eq!(h1.sample_count, Some(1));
    }

    #[test]
    fn histogram_and_summary_label_checks() {
        syntax(
            "# TYPE h histogram\nh_bucket{le=\"x\"} 1\n",
            2,
            "expected float as value for 'le' label, got \"x\"",
        );
        syntax(
            "# TYPE s summary\ns{quantile=\"0x1\"} 1\n",
            2,
            "expected float as value for 'quantile' label, got \"0x1\"",
        );
        // `le` on a summary and `quantile` on a histogram are ordinary labels.
        let f = ok("# TYPE s summary\ns{le=\"x\",quantile=\"1\"} 1\n\
                    # TYPE h histogram\nh_bucket{quantile=\"x\",le=\"1\"} 1\n");
        assert_eq!(labels(&f[0].metric[0]), pairs(&[("quantile", "x")]));
        assert_eq!(labels(&f[1].metric[0]), pairs(&[("le", "x")]));
        // Any label value of an untyped family may be anything.
        ok("m{le=\"x\",quantile=\"y\"} 1\n");
    }

    #[test]
    fn nan_le_and_quantile_are_ignored() {
        let f = ok(
            "# TYPE h histogram\nh_bucket{le=\"NaN\"} 1\nh_bucket{le=\"1\"} 2\n\
                    # TYPE s summary\ns{quantile=\"nan\"} 1\ns 5\n",
        );
        let h = f[0].metric[0].histogram.as_ref().unwrap();
        assert_eq!(h.bucket.len(), 1);
        let s = f[1].metric[0].summary.as_ref().unwrap();
        assert!(s.quantile.is_empty());
        assert_eq!(s.sample_count, None);
    }

    #[test]
    fn histogram_line_without_suffix_or_le() {
        let f = ok("# TYPE h histogram\nh 1\nh_bucket 2\n");
        let h = f[0].metric[0].histogram.as_ref().unwrap();
        assert_eq!(**h, Histogram::default());
        assert_eq!(f[0].metric.len(), 1);
    }

    #[test]
    fn le_on_count_line_is_not_a_label() {
        let f = ok("# TYPE h histogram\nh_count{le=\"1\",a=\"b\"} 5\nh_sum{a=\"b\"} 1\n");
        assert_eq!(f[0].metric.len(), 1);
        assert_eq!(labels(&f[0].metric[0]), pairs(&[("a", "b")]));
        let h = f[0].metric[0].histogram.as_ref().unwrap();
        assert_eq!(
            (h.sample_count, h.sample_sum, h.bucket.len()),
            (Some(5), Some(1.0), 0)
        );
    }

    #[test]
    fn stray_carriage_return_line() {
        syntax("m 1\n\r\n", 2, "invalid metric name");
    }

    #[test]
    fn duplicate_quantile_label_last_wins() {
        let f = ok("# TYPE s summary\ns{quantile=\"0.1\",quantile=\"0.2\"} 1\n");
        let s = f[0].metric[0].summary.as_ref().unwrap();
        assert_eq!(s.quantile[0].quantile, Some(0.2));
    }

    #[test]
    fn suffixes_without_declared_base_are_own_families() {
        let f = ok("x_count 1\nx_sum 2\nx_bucket{le=\"a\"} 3\n");
        let names: Vec<_> = f.iter().filter_map(|f| f.name.as_deref()).collect();
        assert_eq!(names, ["x_bucket", "x_count", "x_sum"]);
        // A gauge base does not capture them either.
        let f = ok("# TYPE x gauge\nx 1\nx_count 2\n");
        assert_eq!(f.len(), 2);
        // `_bucket` does not attach to a summary.
        let f = ok("# TYPE s summary\ns_bucket 1\ns_count 2\n");
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].name.as_deref(), Some("s_bucket"));
        // The bare suffix is not a suffix.
        let f = ok("# TYPE _count summary\n_count 1\n");
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn existing_suffixed_family_wins() {
        // `s_count` was created before `s` became a summary, so it stays separate.
        let f = ok("s_count 1\n# TYPE s summary\ns_count 2\ns_sum 3\n");
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].name.as_deref(), Some("s_count"));
        assert_eq!(f[1].metric.len(), 2);
    }

    #[test]
    fn help_and_type_on_suffix_names_attach_to_base() {
        let f = ok("# TYPE h histogram\n# HELP h_count about h\nh_count 1\n");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].help.as_deref(), Some("about h"));
        syntax(
            "# TYPE h histogram\n# TYPE h_bucket counter\n",
            2,
            "second TYPE line for metric name \"h\", or TYPE reported after samples",
        );
    }

    #[test]
    fn summary_timestamp_goes_to_shared_metric() {
        let f = ok("# TYPE s summary\ns_sum 1 5\ns_count 2 6\n");
        assert_eq!(f[0].metric.len(), 1);
        assert_eq!(f[0].metric[0].timestamp_ms, Some(6));
    }

    #[test]
    fn summary_labels_come_from_first_line() {
        let f = ok("# TYPE s summary\ns{b=\"2\",a=\"1\"} 1\ns_sum{a=\"1\",b=\"2\"} 1\n");
        assert_eq!(f[0].metric.len(), 1);
        assert_eq!(labels(&f[0].metric[0]), pairs(&[("b", "2"), ("a", "1")]));
    }

    #[test]
    fn go_uint64_conversion() {
        assert_eq!(go_f64_to_u64(1.5), 1);
        assert_eq!(go_f64_to_u64(-1.0), u64::MAX);
        assert_eq!(go_f64_to_u64(-1.5), u64::MAX);
        assert_eq!(go_f64_to_u64(-0.5), 0);
        assert_eq!(go_f64_to_u64(f64::NAN), 1 << 63);
        assert_eq!(go_f64_to_u64(f64::INFINITY), 1 << 63);
        assert_eq!(go_f64_to_u64(f64::NEG_INFINITY), 1 << 63);
        assert_eq!(go_f64_to_u64(1e30), 1 << 63);
        assert_eq!(go_f64_to_u64(-1e30), 1 << 63);
        assert_eq!(go_f64_to_u64(9_223_372_036_854_775_808.0), 1 << 63);
        assert_eq!(
            go_f64_to_u64(18_446_744_073_709_549_568.0),
            18_446_744_073_709_549_568
        );
        assert_eq!(go_f64_to_u64(18_446_744_073_709_551_616.0), 1 << 63);
        assert_eq!(go_f64_to_u64(1e15), 1_000_000_000_000_000);
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote(b"a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            go_quote(b"\x07\x08\x0c\n\r\t\x0b\x00\x7f"),
            r#""\a\b\f\n\r\t\v\x00\x7f""#
        );
        assert_eq!(
            go_quote("é\u{80}\u{a0}\u{ad}ÿ\u{200b}😀\u{e000}\u{10ffff}".as_bytes()),
            "\"é\\u0080\\u00a0\\u00adÿ\\u200b😀\\ue000\\U0010ffff\""
        );
        assert_eq!(go_quote(b"\xe2\x82x\xff"), r#""\xe2\x82x\xff""#);
        assert_eq!(go_quote("a\u{301}'".as_bytes()), "\"a\u{301}'\"");
        assert_eq!(go_quote_rune('\''), r"'\''");
        assert_eq!(go_quote_rune('"'), "'\"'");
        assert_eq!(go_quote_rune('\u{ff}'), "'ÿ'");
    }

    #[test]
    fn error_display() {
        assert_eq!(
            err(b"m x\n"),
            "text format parsing error in line 1: expected float as value, got \"x\""
        );
    }

    // ---- property tests ---------------------------------------------------------------

    /// Fragments that make near-valid lines.
    const FRAGMENTS: &[&str] = &[
        "# HELP ",
        "# TYPE ",
        "#",
        " ",
        "\t",
        "\n",
        "\n",
        "\n",
        "m",
        "m_sum",
        "m_count",
        "m_bucket",
        "x",
        ":",
        "{",
        "}",
        "=",
        ",",
        "\"",
        "\\",
        "\\n",
        "\\\"",
        "le",
        "quantile",
        "__name__",
        "0.5",
        "1",
        "-1",
        "+Inf",
        "NaN",
        "1e400",
        "0x1",
        "123",
        "histogram",
        "summary",
        "counter",
        "gauge",
        "gauge_histogram",
        "untyped",
        "\r",
        "\u{ff}",
        "é",
    ];

    fn near_valid() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                8 => prop::sample::select(FRAGMENTS).prop_map(|s| s.as_bytes().to_vec()),
                1 => any::<u8>().prop_map(|b| vec![b]),
            ],
            0..60,
        )
        .prop_map(|parts| parts.concat())
    }

    fn check_invariants(families: &[MetricFamily]) {
        for w in families.windows(2) {
            assert!(w[0].name < w[1].name, "sorted and unique");
        }
        for f in families {
            assert!(!f.metric.is_empty());
            assert!(f.r#type.is_some());
        }
    }

    #[derive(Debug, Clone)]
    struct GenMetric {
        labels: Vec<(String, String)>,
        value: f64,
        timestamp: Option<i64>,
        quantiles: Vec<(f64, f64)>,
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    }

    #[derive(Debug, Clone)]
    struct GenFamily {
        name: String,
        help: Option<String>,
        typ: MetricType,
        metrics: Vec<GenMetric>,
    }

    fn gen_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            (-1000i64..1000).prop_map(|i| i as f64),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::NAN),
            Just(-0.0),
        ]
    }

    fn gen_bound() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>().prop_filter("not NaN", |f| !f.is_nan()),
            Just(f64::INFINITY),
            (0i32..100).prop_map(|i| f64::from(i) / 10.0),
        ]
    }

    fn gen_metric(typ: MetricType) -> impl Strategy<Value = GenMetric> {
        let label_names = prop::collection::btree_set("[a-zA-Z_][a-zA-Z0-9_]{0,6}", 0..4);
        (
            label_names,
            prop::collection::vec(any::<String>(), 4),
            gen_value(),
            prop::option::of(any::<i64>()),
            prop::collection::vec((gen_bound(), gen_value()), 0..4),
            prop::collection::vec((gen_bound(), 0u64..(1 << 53)), 0..4),
            gen_value(),
            0u64..(1 << 53),
        )
            .prop_map(
                move |(names, values, value, timestamp, quantiles, buckets, sum, count)| {
                    let labels = names
                        .into_iter()
                        .filter(|n| {
                            n != "__name__"
                                && !(typ == MetricType::Summary && n == "quantile")
                                && !(typ == MetricType::Histogram && n == "le")
                        })
                        .zip(values)
                        .collect();
                    GenMetric {
                        labels,
                        value,
                        timestamp,
                        quantiles,
                        buckets,
                        sum,
                        count,
                    }
                },
            )
    }

    fn gen_family() -> impl Strategy<Value = GenFamily> {
        (
            "[a-zA-Z_:][a-zA-Z0-9_:]{0,10}",
            prop::option::of(any::<String>()),
            prop::sample::select(vec![
                MetricType::Counter,
                MetricType::Gauge,
                MetricType::Untyped,
                MetricType::Summary,
                MetricType::Histogram,
            ]),
        )
            .prop_flat_map(|(name, help, typ)| {
                prop::collection::vec(gen_metric(typ), 1..4).prop_map(move |metrics| GenFamily {
                    name: name.clone(),
                    help: help.clone(),
                    typ,
                    metrics,
                })
            })
    }

    /// Families whose names do not interfere with each other's suffixes, and summary or
    /// histogram series with distinct label sets (otherwise the parser folds them).
    fn gen_families() -> impl Strategy<Value = Vec<GenFamily>> {
        prop::collection::vec(gen_family(), 0..5).prop_map(|fams| {
            let mut out: Vec<GenFamily> = Vec::new();
            for mut f in fams {
                let clash = out.iter().any(|o| {
                    let related = |a: &str, b: &str| {
                        a == b
                            || ["_count", "_sum", "_bucket"].iter().any(|s| {
                                a.strip_suffix(s) == Some(b) || b.strip_suffix(s) == Some(a)
                            })
                    };
                    related(&o.name, &f.name)
                });
                if clash {
                    continue;
                }
                if matches!(f.typ, MetricType::Summary | MetricType::Histogram) {
                    let mut seen = std::collections::HashSet::new();
                    f.metrics.retain(|m| {
                        let mut k = m.labels.clone();
                        k.sort();
                        seen.insert(k)
                    });
                }
                out.push(f);
            }
            out
        })
    }

    fn escape_label_value(s: &str) -> String {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    }

    fn escape_help(s: &str) -> String {
        s.replace('\\', "\\\\").replace('\n', "\\n")
    }

    fn render_float(f: f64) -> String {
        if f.is_nan() {
            "NaN".to_owned()
        } else if f == f64::INFINITY {
            "+Inf".to_owned()
        } else if f == f64::NEG_INFINITY {
            "-Inf".to_owned()
        } else {
            format!("{f:e}")
        }
    }

    fn render_labels(labels: &[(String, String)], extra: Option<(&str, f64)>) -> String {
        let mut parts: Vec<String> = labels
            .iter()
            .map(|(n, v)| format!("{n}=\"{}\"", escape_label_value(v)))
            .collect();
        if let Some((n, v)) = extra {
            parts.push(format!("{n}=\"{}\"", render_float(v)));
        }
        format!("{{{}}}", parts.join(","))
    }

    fn render(fams: &[GenFamily]) -> String {
        let mut out = String::new();
        for f in fams {
            if let Some(h) = &f.help {
                out.push_str(&format!("# HELP {} {}\n", f.name, escape_help(h)));
            }
            let word = match f.typ {
                MetricType::Counter => "counter",
                MetricType::Gauge => "gauge",
                MetricType::Summary => "summary",
                MetricType::Histogram => "histogram",
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {} {word}\n", f.name));
            for m in &f.metrics {
                let ts = m.timestamp.map(|t| format!(" {t}")).unwrap_or_default();
                let l = render_labels(&m.labels, None);
                match f.typ {
                    MetricType::Summary => {
                        for (q, v) in &m.quantiles {
                            let ql = render_labels(&m.labels, Some(("quantile", *q)));
                            out.push_str(&format!("{}{ql} {}{ts}\n", f.name, render_float(*v)));
                        }
                        out.push_str(&format!("{}_sum{l} {}{ts}\n", f.name, render_float(m.sum)));
                        out.push_str(&format!("{}_count{l} {}{ts}\n", f.name, m.count));
                    }
                    MetricType::Histogram => {
                        for (b, c) in &m.buckets {
                            let bl = render_labels(&m.labels, Some(("le", *b)));
                            out.push_str(&format!("{}_bucket{bl} {c}{ts}\n", f.name));
                        }
                        out.push_str(&format!("{}_sum{l} {}{ts}\n", f.name, render_float(m.sum)));
                        out.push_str(&format!("{}_count{l} {}{ts}\n", f.name, m.count));
                    }
                    _ => out.push_str(&format!("{}{l} {}{ts}\n", f.name, render_float(m.value))),
                }
            }
        }
        out
    }

    fn same_float(a: Option<f64>, b: f64) -> bool {
        match a {
            Some(a) => (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits(),
            None => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn never_panics_on_bytes(input in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(f) = parse(&input) {
                check_invariants(&f);
            }
        }

        #[test]
        fn never_panics_on_near_valid(input in near_valid()) {
            if let Ok(f) = parse(&input) {
                check_invariants(&f);
            }
        }

        #[test]
        fn round_trip(fams in gen_families()) {
            let text = render(&fams);
            let parsed = match parse(text.as_bytes()) {
                Ok(p) => p,
                Err(e) => return Err(TestCaseError::fail(format!("{e}\n{text}"))),
            };
            let mut expected = fams.clone();
            expected.sort_by(|a, b| a.name.cmp(&b.name));
            prop_assert_eq!(parsed.len(), expected.len());
            for (p, e) in parsed.iter().zip(&expected) {
                prop_assert_eq!(p.name.as_deref(), Some(e.name.as_str()));
                // Blanks right after the name belong to the separator, and a HELP line
                // without text is ignored.
                let help = e
                    .help
                    .as_deref()
                    .map(|h| h.trim_start_matches([' ', '\t']))
                    .filter(|h| !h.is_empty());
                prop_assert_eq!(p.help.as_deref(), help);
                prop_assert_eq!(p.r#type, Some(e.typ as i32));
                prop_assert_eq!(p.metric.len(), e.metrics.len());
                for (pm, em) in p.metric.iter().zip(&e.metrics) {
                    prop_assert_eq!(labels(pm), em.labels.clone());
                    prop_assert_eq!(pm.timestamp_ms, em.timestamp);
                    match e.typ {
                        MetricType::Counter => prop_assert!(same_float(pm.counter.as_ref().and_then(|c| c.value), em.value)),
                        MetricType::Gauge => prop_assert!(same_float(pm.gauge.as_ref().and_then(|c| c.value), em.value)),
                        MetricType::Untyped => prop_assert!(same_float(pm.untyped.as_ref().and_then(|c| c.value), em.value)),
                        MetricType::Summary => {
                            let s = pm.summary.as_ref().ok_or_else(|| TestCaseError::fail("no summary"))?;
                            prop_assert_eq!(s.sample_count, Some(em.count));
                            prop_assert!(same_float(s.sample_sum, em.sum));
                            prop_assert_eq!(s.quantile.len(), em.quantiles.len());
                            for (pq, (q, v)) in s.quantile.iter().zip(&em.quantiles) {
                                prop_assert!(same_float(pq.quantile, *q));
                                prop_assert!(same_float(pq.value, *v));
                            }
                        }
                        MetricType::Histogram => {
                            let h = pm.histogram.as_ref().ok_or_else(|| TestCaseError::fail("no histogram"))?;
                            prop_assert_eq!(h.sample_count, Some(em.count));
                            prop_assert!(same_float(h.sample_sum, em.sum));
                            prop_assert_eq!(h.bucket.len(), em.buckets.len());
                            for (pb, (b, c)) in h.bucket.iter().zip(&em.buckets) {
                                prop_assert!(same_float(pb.upper_bound, *b));
                                prop_assert_eq!(pb.cumulative_count, Some(*c));
                            }
                        }
                        MetricType::GaugeHistogram => unreachable!(),
                    }
                }
            }
        }

        #[test]
        fn oracle_prometheus_parse(
            lines in prop::collection::vec(
                (
                    "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
                    prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,5}", "[a-zA-Z0-9 .:/-]{0,8}", 1..4),
                    gen_value(),
                    prop::option::of(0i64..4_000_000_000_000),
                ),
                1..12,
            ),
            types in prop::collection::vec(prop::sample::select(vec!["counter", "gauge", "untyped", ""]), 12),
        ) {
            // Assign one type per name, declared before its first sample.
            let mut declared: HashMap<String, &str> = HashMap::new();
            let mut text = String::new();
            for (i, (name, labels, value, ts)) in lines.iter().enumerate() {
                if labels.contains_key("__name__") {
                    continue;
                }
                if !declared.contains_key(name) {
                    let t = types[i % types.len()];
                    declared.insert(name.clone(), t);
                    if !t.is_empty() {
                        text.push_str(&format!("# HELP {name} Some help.\n# TYPE {name} {t}\n"));
                    }
                }
                let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                let ts = ts.map(|t| format!(" {t}")).unwrap_or_default();
                text.push_str(&format!("{name}{{{}}} {}{ts}\n", l.join(","), render_float(*value)));
            }
            let ours = parse(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let theirs = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;

            type Row = (String, Vec<(String, String)>, &'static str, u64);
            let canon = |v: f64| if v.is_nan() { u64::MAX } else { v.to_bits() };
            let mut a: Vec<Row> = Vec::new();
            for f in &ours {
                for m in &f.metric {
                    let mut l = labels(m);
                    l.sort();
                    let (kind, v) = if let Some(c) = &m.counter {
                        ("counter", c.value)
                    } else if let Some(g) = &m.gauge {
                        ("gauge", g.value)
                    } else {
                        ("untyped", m.untyped.as_ref().and_then(|u| u.value))
                    };
                    a.push((f.name.clone().unwrap_or_default(), l, kind, canon(v.unwrap_or(0.0))));
                }
            }
            let mut b: Vec<Row> = Vec::new();
            for s in &theirs.samples {
                let mut l: Vec<(String, String)> =
                    s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                l.sort();
                let (kind, v) = match s.value {
                    prometheus_parse::Value::Counter(v) => ("counter", v),
                    prometheus_parse::Value::Gauge(v) => ("gauge", v),
                    prometheus_parse::Value::Untyped(v) => ("untyped", v),
                    _ => ("other", 0.0),
                };
                b.push((s.metric.clone(), l, kind, canon(v)));
            }
            a.sort();
            b.sort();
            prop_assert_eq!(a, b, "{}", text);
        }
    }
}
