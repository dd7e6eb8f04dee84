//! The `Replaces` header (RFC 3891) as an attended transfer carries it: in
//! the `Refer-To` URI's embedded headers (RFC 3261 §19.1.1, escaped), it
//! names the dialog the transfer replaces by Call-ID and both tags.

/// Longest Call-ID or tag taken (the transaction layer's own bound on a
/// header is larger; a dialog's identifiers never are).
const MAX_ID: usize = 256;

/// A dialog named by `Replaces`: `to_tag` is the tag of the side that
/// receives the replacing request (here, the node), `from_tag` the other
/// side's (RFC 3891 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaces {
    /// The dialog's Call-ID.
    pub call_id: String,
    /// The recipient's tag.
    pub to_tag: String,
    /// The sender's tag.
    pub from_tag: String,
    /// Only an early dialog may be replaced.
    pub early_only: bool,
}

/// Parses a `Replaces` value: `callid;to-tag=x;from-tag=y[;early-only]`.
/// Both tags are required (§6.1); anything unbounded or malformed is
/// `None`.
pub fn parse(value: &str) -> Option<Replaces> {
    let mut parts = value.split(';');
    let call_id = parts.next()?.trim();
    let bounded =
        |s: &str| !s.is_empty() && s.len() <= MAX_ID && s.bytes().all(|b| b.is_ascii_graphic());
    if !bounded(call_id) {
        return None;
    }
    let (mut to_tag, mut from_tag, mut early_only) = (None, None, false);
    for p in parts {
        let (name, v) = p.split_once('=').map_or((p, None), |(n, v)| (n, Some(v)));
        let name = name.trim();
        let v = v.map(str::trim);
        if name.eq_ignore_ascii_case("to-tag") {
            to_tag = Some(v.filter(|v| bounded(v))?);
        } else if name.eq_ignore_ascii_case("from-tag") {
            from_tag = Some(v.filter(|v| bounded(v))?);
        } else if name.eq_ignore_ascii_case("early-only") {
            early_only = true;
        }
    }
    Some(Replaces {
        call_id: call_id.to_owned(),
        to_tag: to_tag?.to_owned(),
        from_tag: from_tag?.to_owned(),
        early_only,
    })
}

/// The value of the embedded header `name` of a URI (`sip:x@h?Name=v&...`),
/// unescaped; `None` when absent or badly escaped.
pub fn embedded_header(target: &str, name: &str) -> Option<String> {
    // The host part starts at the first `@` (a user part never holds one
    // unescaped); a Call-ID in the headers may hold its own.
    let at = target.find('@').unwrap_or(0);
    let (_, headers) = target[at..].split_once('?')?;
    headers.split('&').find_map(|h| {
        let (n, v) = h.split_once('=')?;
        unescape(n)
            .filter(|n| n.eq_ignore_ascii_case(name))
            .and_then(|_| unescape(v))
    })
}

/// `%XX` escapes undone (RFC 3986 §2.1); a broken escape or a result that
/// is not UTF-8 is `None`.
fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attended_transfers_refer_to_names_the_dialog() {
        // RFC 5589 §7.1's example, as phones write it.
        let to = "sips:transfertarget@chicago.example.com?Replaces=090459243588173445%3Bto-tag%3D7553452%3Bfrom-tag%3D31431";
        let v = embedded_header(to, "replaces").expect("the header");
        assert_eq!(
            parse(&v),
            Some(Replaces {
                call_id: "090459243588173445".into(),
                to_tag: "7553452".into(),
                from_tag: "31431".into(),
                early_only: false,
            })
        );
        // Linphone's: the Call-ID has an `@`, escaped or not; other
        // embedded headers around it.
        let to = "sip:prenotazioni@127.0.0.1:5060?Require=replaces&Replaces=abc%40h%3Bfrom-tag%3Dx%3Bto-tag%3Dy%3Bearly-only";
        let r = parse(&embedded_header(to, "Replaces").unwrap()).unwrap();
        assert_eq!(
            (r.call_id.as_str(), r.to_tag.as_str(), r.from_tag.as_str()),
            ("abc@h", "y", "x")
        );
        assert!(r.early_only);
        let to = "sip:q@h?Replaces=abc@h%3Bfrom-tag%3Dx%3Bto-tag%3Dy";
        let r = parse(&embedded_header(to, "Replaces").unwrap()).unwrap();
        assert_eq!(r.call_id, "abc@h", "an unescaped @ in the Call-ID");
    }

    #[test]
    fn anything_incomplete_or_broken_names_no_dialog() {
        assert_eq!(embedded_header("sip:q@h", "Replaces"), None);
        assert_eq!(embedded_header("sip:q@h?Replaces=a%3", "Replaces"), None);
        assert_eq!(embedded_header("sip:q@h?Replaces=%ff%fe", "Replaces"), None);
        assert_eq!(embedded_header("sip:q@h?Other=x", "Replaces"), None);
        for v in [
            "",
            "abc",
            "abc;to-tag=1",
            "abc;from-tag=1",
            "abc;to-tag=;from-tag=2",
            "a b;to-tag=1;from-tag=2",
        ] {
            assert_eq!(parse(v), None, "{v:?}");
        }
        let long = format!("{};to-tag=1;from-tag=2", "x".repeat(MAX_ID + 1));
        assert_eq!(parse(&long), None);
    }
}
