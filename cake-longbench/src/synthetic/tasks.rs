//! The eight synthetic tasks. Each builder turns (haystack, cell seed, number of filler
//! units, depth) into the variable part of a record; [`super::fit`] picks the number of
//! units that fills the target length. All random draws that define the answer are made
//! before the filler is sized, so the question and answer of a cell do not depend on the
//! length search.

use super::rng::SplitMix64;
use super::{Built, Draft, Haystack, insert_at_depths};

/// Names of the synthetic tasks.
pub const TASKS: [&str; 8] = [
    "synth_passkey",
    "synth_multikey",
    "synth_multivalue",
    "synth_kv",
    "synth_passage_retrieval",
    "synth_passage_count",
    "synth_vartrack",
    "synth_fewshot",
];

/// (haystack, cell seed, filler units, depth) -> draft.
pub(crate) type BuildFn = fn(&Haystack, u64, usize, f64) -> Built;

/// How to build one task.
pub(crate) struct TaskBuilder {
    /// Whether records vary over the configured depths.
    pub uses_depth: bool,
    /// The builder.
    pub build: BuildFn,
}

/// The builder of a task.
pub(crate) fn builder(task: &str) -> Option<TaskBuilder> {
    let (uses_depth, build): (bool, BuildFn) = match task {
        "synth_passkey" => (true, passkey),
        "synth_multikey" => (true, multikey),
        "synth_multivalue" => (true, multivalue),
        "synth_kv" => (true, kv),
        "synth_passage_retrieval" => (true, passage_retrieval),
        "synth_passage_count" => (false, passage_count),
        "synth_vartrack" => (true, vartrack),
        "synth_fewshot" => (true, fewshot),
        _ => return None,
    };
    Some(TaskBuilder { uses_depth, build })
}

const ADJECTIVES: [&str; 24] = [
    "ancient", "brave", "calm", "dusty", "eager", "fancy", "gentle", "hollow", "icy", "jolly",
    "keen", "lively", "misty", "noble", "odd", "proud", "quiet", "rapid", "silent", "tidy",
    "vivid", "wild", "young", "zesty",
];
const NOUNS: [&str; 24] = [
    "harbor", "lantern", "meadow", "canyon", "falcon", "orchard", "glacier", "compass", "violin",
    "tunnel", "anchor", "beacon", "castle", "dune", "ember", "forest", "garden", "island",
    "jungle", "kettle", "ladder", "mirror", "needle", "parrot",
];

/// `count` distinct "adjective-noun" keys.
fn keys(rng: &mut SplitMix64, count: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    while out.len() < count {
        let k = format!("{}-{}", rng.pick(&ADJECTIVES), rng.pick(&NOUNS));
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// `count` distinct numbers with `digits` digits.
fn numbers(rng: &mut SplitMix64, count: usize, digits: u32) -> Vec<String> {
    let lo = 10u64.pow(digits - 1);
    let mut out: Vec<String> = Vec::new();
    while out.len() < count {
        let n = rng.range(lo, lo * 10 - 1).to_string();
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// `units` consecutive haystack sentences from `start`, wrapping around.
fn filler(h: &Haystack, start: usize, units: usize) -> Vec<String> {
    (0..units)
        .map(|i| h.sentences[(start + i) % h.sentences.len()].clone())
        .collect()
}

fn magic(key: &str, value: &str) -> String {
    format!("One of the special magic numbers for {key} is: {value}.")
}

fn passkey(h: &Haystack, seed: u64, units: usize, depth: f64) -> Built {
    let mut rng = SplitMix64::new(seed);
    let key = numbers(&mut rng, 1, 5).remove(0);
    let start = rng.below(h.sentences.len());
    let needle = format!("The pass key is {key}. Remember it. {key} is the pass key.");
    Built::Draft(Draft {
        context: insert_at_depths(&filler(h, start, units), &[(depth, needle.clone())], " "),
        input: "What is the pass key?".into(),
        answers: vec![key],
        all_classes: None,
        needle: Some(needle),
    })
}

fn multikey(h: &Haystack, seed: u64, units: usize, depth: f64) -> Built {
    let mut rng = SplitMix64::new(seed);
    let ks = keys(&mut rng, 4);
    let vs = numbers(&mut rng, 4, 7);
    let start = rng.below(h.sentences.len());
    let mut items = vec![(depth, magic(&ks[0], &vs[0]))];
    for i in 1..4 {
        items.push((rng.unit(), magic(&ks[i], &vs[i])));
    }
    Built::Draft(Draft {
        context: insert_at_depths(&filler(h, start, units), &items, " "),
        input: format!(
            "What is the special magic number for {} mentioned in the provided text?",
            ks[0]
        ),
        answers: vec![vs[0].clone()],
        all_classes: None,
        needle: Some(magic(&ks[0], &vs[0])),
    })
}

fn multivalue(h: &Haystack, seed: u64, units: usize, depth: f64) -> Built {
    let mut rng = SplitMix64::new(seed);
    let key = keys(&mut rng, 1).remove(0);
    let vs = numbers(&mut rng, 4, 7);
    let start = rng.below(h.sentences.len());
    let mut items = vec![(depth, magic(&key, &vs[0]))];
    for v in &vs[1..] {
        items.push((rng.unit(), magic(&key, v)));
    }
    let context = insert_at_depths(&filler(h, start, units), &items, " ");
    // Gold: all values in the order they appear in the context.
    let mut order: Vec<(usize, &String)> = vs
        .iter()
        .map(|v| (context.find(&magic(&key, v)).unwrap_or(usize::MAX), v))
        .collect();
    order.sort();
    let answer = order
        .iter()
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    Built::Draft(Draft {
        context,
        input: format!(
            "What are all the special magic numbers for {key} mentioned in the provided text?"
        ),
        answers: vec![answer],
        all_classes: None,
        needle: None,
    })
}

fn uuid(rng: &mut SplitMix64) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // RFC 4122 variant
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000; // version 4
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

fn kv(_h: &Haystack, seed: u64, units: usize, depth: f64) -> Built {
    let mut rng = SplitMix64::new(seed);
    let n = units.max(1);
    let pairs: Vec<(String, String)> = (0..n).map(|_| (uuid(&mut rng), uuid(&mut rng))).collect();
    let target = (depth * (n - 1) as f64).round() as usize;
    let lines: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("    \"{k}\": \"{v}\""))
        .collect();
    Built::Draft(Draft {
        context: format!("{{\n{}\n}}", lines.join(",\n")),
        input: format!("What is the value of key \"{}\"?", pairs[target].0),
        answers: vec![pairs[target].1.clone()],
        all_classes: None,
        needle: Some(lines[target].trim_start().to_string()),
    })
}

fn labelled(paragraphs: &[&str]) -> String {
    paragraphs
        .iter()
        .enumerate()
        .map(|(i, p)| format!("Paragraph {}: {p}", i + 1))
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn passage_retrieval(h: &Haystack, seed: u64, units: usize, depth: f64) -> Built {
    let mut rng = SplitMix64::new(seed);
    let mut order: Vec<usize> = (0..h.passages.len()).collect();
    rng.shuffle(&mut order);
    let abstract_pick = rng.unit();
    let n = units.max(1);
    if n > order.len() {
        return Built::TooManyUnits(order.len());
    }
    let chosen: Vec<&str> = order[..n].iter().map(|&i| h.passages[i].as_str()).collect();
    let target = (depth * (n - 1) as f64).round() as usize;
    // The "abstract" is an extract: two consecutive sentences of the target passage.
    let sentences = super::split_sentences(chosen[target]);
    let extract = if sentences.is_empty() {
        chosen[target].to_string()
    } else {
        let first =
            ((abstract_pick * (sentences.len() - 1) as f64) as usize).min(sentences.len() - 1);
        sentences[first..(first + 2).min(sentences.len())].join(" ")
    };
    Built::Draft(Draft {
        context: labelled(&chosen),
        input: extract,
        answers: vec![format!("Paragraph {}", target + 1)],
        all_classes: None,
        needle: None,
    })
}

fn passage_count(h: &Haystack, seed: u64, units: usize, _depth: f64) -> Built {
    let mut rng = SplitMix64::new(seed);
    let mut order: Vec<usize> = (0..h.passages.len()).collect();
    rng.shuffle(&mut order);
    let unique_share = 0.5 + 0.5 * rng.unit();
    let n = units.max(1);
    let unique = ((n as f64 * unique_share).round() as usize).clamp(1, n);
    if unique > order.len() {
        return Built::TooManyUnits(order.len());
    }
    let mut slots: Vec<usize> = order[..unique].to_vec();
    while slots.len() < n {
        slots.push(order[rng.below(unique)]);
    }
    rng.shuffle(&mut slots);
    let chosen: Vec<&str> = slots.iter().map(|&i| h.passages[i].as_str()).collect();
    Built::Draft(Draft {
        context: labelled(&chosen),
        input: String::new(),
        answers: vec![unique.to_string()],
        all_classes: None,
        needle: None,
    })
}

fn var_name(rng: &mut SplitMix64) -> String {
    (0..5)
        .map(|_| (b'A' + rng.below(26) as u8) as char)
        .collect()
}

fn vartrack(h: &Haystack, seed: u64, units: usize, depth: f64) -> Built {
    const HOPS: usize = 4;
    let mut rng = SplitMix64::new(seed);
    let mut names: Vec<String> = Vec::new();
    while names.len() < 2 * HOPS {
        let n = var_name(&mut rng);
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let values = numbers(&mut rng, 2, 5);
    let mut distractor_at: Vec<f64> = (0..HOPS).map(|_| rng.unit()).collect();
    distractor_at.sort_by(f64::total_cmp);
    let start = rng.below(h.sentences.len());
    let chain = |names: &[String], value: &str| -> Vec<String> {
        let mut s = vec![format!("VAR {} = {value}.", names[0])];
        for w in names.windows(2) {
            s.push(format!("VAR {} = VAR {}.", w[1], w[0]));
        }
        s
    };
    let main = chain(&names[..HOPS], &values[0]);
    let other = chain(&names[HOPS..], &values[1]);
    let mut items: Vec<(f64, String)> = Vec::new();
    for (i, s) in main.into_iter().enumerate() {
        items.push((depth + (1.0 - depth) * i as f64 / HOPS as f64, s));
    }
    for (at, s) in distractor_at.into_iter().zip(other) {
        items.push((at, s));
    }
    Built::Draft(Draft {
        context: insert_at_depths(&filler(h, start, units), &items, " "),
        input: format!(
            "Find all variables that are assigned the value {} in the text above.",
            values[0]
        ),
        answers: vec![names[..HOPS].join(" ")],
        all_classes: None,
        needle: None,
    })
}

const CATEGORIES: [[&str; 10]; 8] = [
    [
        "tiger", "rabbit", "eagle", "salmon", "giraffe", "wolf", "owl", "dolphin", "camel",
        "beaver",
    ],
    [
        "crimson",
        "turquoise",
        "amber",
        "violet",
        "olive",
        "scarlet",
        "indigo",
        "beige",
        "magenta",
        "teal",
    ],
    [
        "mango", "cherry", "papaya", "apricot", "banana", "plum", "lychee", "guava", "peach",
        "kiwi",
    ],
    [
        "Norway", "Peru", "Kenya", "Vietnam", "Canada", "Egypt", "Chile", "Finland", "Nepal",
        "Ghana",
    ],
    [
        "carpenter",
        "surgeon",
        "pilot",
        "plumber",
        "librarian",
        "chemist",
        "baker",
        "lawyer",
        "sculptor",
        "nurse",
    ],
    [
        "cello",
        "trumpet",
        "banjo",
        "harp",
        "oboe",
        "accordion",
        "flute",
        "tuba",
        "ukulele",
        "clarinet",
    ],
    [
        "tram",
        "canoe",
        "scooter",
        "glider",
        "ferry",
        "tractor",
        "yacht",
        "sled",
        "bus",
        "helicopter",
    ],
    [
        "hammer", "chisel", "wrench", "trowel", "pliers", "saw", "drill", "sickle", "shovel", "awl",
    ],
];
const LABELS: [&str; 8] = [
    "blicket", "daxel", "wuggo", "fepple", "tomazi", "zorpin", "kikimo", "boubar",
];

fn fewshot(_h: &Haystack, seed: u64, units: usize, depth: f64) -> Built {
    let mut rng = SplitMix64::new(seed);
    let mut labels: Vec<&str> = LABELS.to_vec();
    rng.shuffle(&mut labels); // labels[c] names category c in this record
    let query_cat = rng.below(CATEGORIES.len());
    let query = *rng.pick(&CATEGORIES[query_cat]);
    let n = units.max(1);
    let target = (depth * (n - 1) as f64).round() as usize;
    let line = |item: &str, cat: usize| format!("Item: {item}\nType: {}", labels[cat]);
    let mut examples = Vec::with_capacity(n);
    for i in 0..n {
        if i == target {
            examples.push(line(query, query_cat));
            continue;
        }
        loop {
            let cat = rng.below(CATEGORIES.len());
            let item = *rng.pick(&CATEGORIES[cat]);
            if item != query {
                examples.push(line(item, cat));
                break;
            }
        }
    }
    Built::Draft(Draft {
        needle: Some(examples[target].clone()),
        context: examples.join("\n"),
        input: format!("Item: {query}\nType:"),
        answers: vec![labels[query_cat].to_string()],
        all_classes: Some(LABELS.iter().map(|l| l.to_string()).collect()),
    })
}
