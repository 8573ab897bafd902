//! The Prometheus text exposition format, read tolerantly.
//!
//! Hand-written: the router reads a handful of gauges and counters from a few kilobytes
//! of text every second per engine; the well-known parsers for this format either pull
//! in a regex engine or build a full metric-family model we would throw away. Lines that
//! do not parse are skipped (a scrape is never lost to one odd line), and a randomized
//! test feeds it arbitrary text.

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The series name.
    pub name: &'a str,
    /// Labels in the order written, values unescaped.
    pub labels: Vec<(&'a str, String)>,
    /// The value (`NaN`, `+Inf` and `-Inf` included).
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of an exposition, skipping comments, blank lines and lines that do not
/// parse.
pub fn parse(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(parse_line)
}

fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    let value = rest.split_ascii_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Labels up to the closing `}`; returns them and the text after the brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(tail) = s.strip_prefix('}') {
            return Some((labels, tail));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_labels_and_go_floats() {
        let text = "# HELP x y\n# TYPE x gauge\nvllm:x{engine=\"0\",model_name=\"a \\\"q\\\"\"} 1.795481992456e+09\nplain 3\nbad{ 1\n\nneg -Inf\nts 1.5 1700000000000\n";
        let s: Vec<Sample<'_>> = parse(text).collect();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "vllm:x");
        assert_eq!(s[0].label("model_name"), Some("a \"q\""));
        assert_eq!(s[0].value, 1.795481992456e9);
        assert_eq!((s[1].name, s[1].value), ("plain", 3.0));
        assert_eq!(s[2].value, f64::NEG_INFINITY);
        assert_eq!(s[3].value, 1.5);
    }

    /// Arbitrary text never panics (randomized, seeded).
    #[test]
    fn arbitrary_text_never_panics() {
        let alphabet: Vec<char> = "ab_:{}=\",\\ \n\t#.0123456789e+-InfNaé".chars().collect();
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let len = rng.usize(0..80);
            let text: String = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            for sample in parse(&text) {
                assert!(!sample.name.is_empty());
            }
        }
    }
}
