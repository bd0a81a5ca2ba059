//! Text for people: numbers with their thousands apart, and text made safe inside SVG (XML).
//! Shared by the shadow report and the benchmarks' charts.

/// `12345` as `12 345`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(digit);
    }
    out
}

/// The opening of a `width` × `height` SVG chart on a white background, in the charts'
/// generic font (the shadow report's and the benchmarks').
pub fn svg_start(width: f64, height: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"{width}\" height=\"{height}\" fill=\"#ffffff\"/>\n"
    )
}

/// Text safe inside SVG (XML) text and attributes; control characters become spaces.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&#39;",
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_set_apart() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1 000");
        assert_eq!(thousands(1234567), "1 234 567");
    }

    #[test]
    fn a_chart_starts_with_its_size_on_white() {
        assert_eq!(
            svg_start(720.0, 330.0),
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"330\" viewBox=\"0 0 720 330\" \
             font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"720\" height=\"330\" fill=\"#ffffff\"/>\n"
        );
    }

    #[test]
    fn markup_and_control_characters_are_escaped() {
        assert_eq!(
            xml_escape("a<b & 'c' \"d\"\n"),
            "a&lt;b &amp; &#39;c&#39; &quot;d&quot; "
        );
    }
}
