//! Spoken queue announcements in Italian, composed from the prompt names
//! of Asterisk's Italian sound set (Debian's `asterisk-core-sounds-it-wav`:
//! `digits/N`, `queue-*`), and the prompt library they are played from.
//!
//! The sound files are not shipped (CC BY-SA 3.0, installed from Debian
//! when wanted): the driver loads whatever exists; an announcement whose
//! prompts are missing is skipped, never played with holes.

use std::collections::HashMap;
use std::f64::consts::PI;

use crate::g711::Law;
use crate::prompt::Prompt;

/// Largest number spoken (positions and minutes are capped to it).
pub const MAX_NUMBER: u32 = 9_999;

/// The prompt names that say `n` in Italian, as Asterisk's Italian
/// `say number` does: 0–20 and the elided tens (21, 28, 31, 38, …) have
/// their own file; other tens are said as tens + unit; `hundred` (cento),
/// `thousand` (mille), `thousands` (mila).
pub fn number(n: u32) -> Vec<String> {
    let n = n.min(MAX_NUMBER);
    let mut out = Vec::new();
    if n == 0 {
        out.push("digits/0".to_owned());
        return out;
    }
    let (thousands, rest) = (n / 1000, n % 1000);
    match thousands {
        0 => {}
        1 => out.push("digits/thousand".to_owned()),
        t => {
            out.extend(below_thousand(t));
            out.push("digits/thousands".to_owned());
        }
    }
    out.extend(below_thousand(rest));
    out
}

fn below_thousand(n: u32) -> Vec<String> {
    let mut out = Vec::new();
    let (hundreds, rest) = (n / 100, n % 100);
    if hundreds > 1 {
        out.push(format!("digits/{hundreds}"));
    }
    if hundreds > 0 {
        out.push("digits/hundred".to_owned());
    }
    match rest {
        0 => {}
        1..=20 => out.push(format!("digits/{rest}")),
        _ => {
            let unit = rest % 10;
            if matches!(unit, 1 | 8) {
                // ventuno, ventotto: the tens lose their vowel.
                out.push(format!("digits/{rest}"));
            } else {
                out.push(format!("digits/{}", rest - unit));
                if unit > 0 {
                    out.push(format!("digits/{unit}"));
                }
            }
        }
    }
    out
}

/// "You are caller number N … the estimated wait is M minutes … thank
/// you": the prompt names for a caller at `position` (1 = next) with an
/// expected wait of `minutes` (`None` = unknown, not said).
pub fn position_and_wait(position: u32, minutes: Option<u32>) -> Vec<String> {
    let mut out = Vec::new();
    if position <= 1 {
        out.push("queue-youarenext".to_owned());
    } else {
        out.push("queue-thereare".to_owned());
        out.extend(number(position));
        out.push("queue-callswaiting".to_owned());
    }
    match minutes {
        None => {}
        Some(0 | 1) => {
            out.push("queue-holdtime".to_owned());
            out.push("queue-less-than".to_owned());
            out.extend(number(2));
            out.push("queue-minutes".to_owned());
        }
        Some(m) => {
            out.push("queue-holdtime".to_owned());
            out.extend(number(m));
            out.push("queue-minutes".to_owned());
        }
    }
    out.push("queue-thankyou".to_owned());
    out
}

/// Every prompt name an announcement can use (what the driver loads).
pub fn prompt_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "queue-youarenext",
        "queue-thereare",
        "queue-callswaiting",
        "queue-holdtime",
        "queue-less-than",
        "queue-minutes",
        "queue-thankyou",
        "digits/hundred",
        "digits/thousand",
        "digits/thousands",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for n in 0..=20 {
        names.push(format!("digits/{n}"));
    }
    for t in (30..=90).step_by(10).chain([20]) {
        for n in [t, t + 1, t + 8] {
            names.push(format!("digits/{n}"));
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Prompts by name, loaded once at start-up, shared by every call.
#[derive(Clone, Debug, Default)]
pub struct Library {
    prompts: HashMap<String, Prompt>,
}

impl Library {
    /// An empty library.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a prompt.
    pub fn insert(&mut self, name: impl Into<String>, prompt: Prompt) {
        self.prompts.insert(name.into(), prompt);
    }

    /// A prompt by name.
    pub fn get(&self, name: &str) -> Option<&Prompt> {
        self.prompts.get(name)
    }

    /// Prompts loaded.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// Whether nothing is loaded.
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// Every prompt of `names`, or `None` when one is missing.
    pub fn sequence<S: AsRef<str>>(&self, names: &[S]) -> Option<Vec<Prompt>> {
        names
            .iter()
            .map(|n| self.get(n.as_ref()).cloned())
            .collect()
    }
}

/// Built-in music on hold, so a node with no sound files still plays
/// something better than silence: a slow arpeggio of soft sine tones
/// (C major, F major, G major, C major; 8 s, 8 kHz), generated, no licence.
pub fn builtin_music(law: Law) -> Prompt {
    const RATE: f64 = 8000.0;
    const NOTE: usize = 4000; // half a second
    let chords: [[f64; 4]; 4] = [
        [261.63, 329.63, 392.00, 523.25],
        [349.23, 440.00, 523.25, 698.46],
        [392.00, 493.88, 587.33, 783.99],
        [261.63, 329.63, 392.00, 523.25],
    ];
    let mut samples = Vec::with_capacity(16 * NOTE);
    for chord in chords {
        for f in chord {
            for i in 0..NOTE {
                let t = i as f64 / RATE;
                // Soft attack and decay: no clicks between notes.
                let env = (t * 40.0).min(1.0) * (-(t * 3.0)).exp();
                let v = (2.0 * PI * f * t).sin() * 0.7 + (4.0 * PI * f * t).sin() * 0.3;
                samples.push((v * env * 6000.0) as i16);
            }
        }
    }
    Prompt::from_samples(&samples, law)
}

/// Built-in signal to an operator that the call is a callback (two rising
/// tones, 0.6 s): played when the queue has no recorded callback whisper.
pub fn callback_tone(law: Law) -> Prompt {
    const RATE: f64 = 8000.0;
    let mut samples = Vec::with_capacity(4800);
    for (f, len) in [(660.0, 1200), (0.0, 800), (880.0, 1200), (0.0, 1600)] {
        for i in 0..len {
            let t = f64::from(i) / RATE;
            // 10 ms ramps: no clicks.
            let env = (t * 100.0).min(1.0) * ((f64::from(len - i) / RATE) * 100.0).min(1.0);
            samples.push(((2.0 * PI * f * t).sin() * env * 8000.0) as i16);
        }
    }
    Prompt::from_samples(&samples, law)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(n: u32) -> String {
        number(n)
            .iter()
            .map(|s| s.trim_start_matches("digits/"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn italian_numbers() {
        assert_eq!(said(0), "0");
        assert_eq!(said(7), "7");
        assert_eq!(said(17), "17");
        assert_eq!(said(20), "20");
        assert_eq!(said(21), "21", "ventuno");
        assert_eq!(said(23), "20 3", "ventitré");
        assert_eq!(said(38), "38", "trentotto");
        assert_eq!(said(40), "40");
        assert_eq!(said(100), "hundred", "cento");
        assert_eq!(said(101), "hundred 1");
        assert_eq!(said(245), "2 hundred 40 5", "duecentoquarantacinque");
        assert_eq!(said(1000), "thousand", "mille");
        assert_eq!(said(1999), "thousand 9 hundred 90 9");
        assert_eq!(said(3021), "3 thousands 21", "tremilaventuno");
        assert_eq!(said(1_000_000), said(MAX_NUMBER), "capped");
    }

    #[test]
    fn every_name_an_announcement_uses_is_in_the_load_list() {
        let names = prompt_names();
        for pos in 0..1200 {
            for m in [None, Some(0), Some(1), Some(2), Some(59), Some(pos)] {
                for n in position_and_wait(pos, m) {
                    assert!(names.contains(&n), "{n} missing (position {pos}, {m:?})");
                }
            }
        }
        assert_eq!(
            position_and_wait(3, Some(7)),
            [
                "queue-thereare",
                "digits/3",
                "queue-callswaiting",
                "queue-holdtime",
                "digits/7",
                "queue-minutes",
                "queue-thankyou"
            ]
        );
        assert_eq!(
            position_and_wait(1, None),
            ["queue-youarenext", "queue-thankyou"]
        );
    }

    #[test]
    fn library_plays_only_complete_sequences() {
        let mut lib = Library::new();
        lib.insert("a", builtin_music(Law::Ulaw));
        assert!(lib.sequence(&["a", "a"]).is_some_and(|v| v.len() == 2));
        assert!(lib.sequence(&["a", "b"]).is_none());
        let m = builtin_music(Law::Alaw);
        assert_eq!(m.frames.len(), 400, "8 s of 20 ms frames");
        let loud = m
            .frames
            .iter()
            .flatten()
            .map(|&b| i64::from(Law::Alaw.decode(b)).abs())
            .max()
            .unwrap();
        assert!(
            (2000..12000).contains(&loud),
            "audible, not clipping: {loud}"
        );
    }
}
