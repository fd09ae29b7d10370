//! `--sampling` parsing: every form of the grammar, and one-line errors naming the option.

use kadyn_core::{Curriculum, Distribution};
use kadyn_gen::{format_sampling, parse_sampling, GenError};

fn err(spec: &str) -> String {
    match parse_sampling(spec) {
        Err(e @ GenError::Option { .. }) => e.to_string(),
        other => panic!("{spec:?} should be refused, got {other:?}"),
    }
}

#[test]
fn parses_every_form() {
    assert_eq!(
        parse_sampling("uniform").unwrap(),
        Curriculum::single(Distribution::Uniform)
    );
    assert_eq!(
        parse_sampling("power:0.7").unwrap(),
        Curriculum::single(Distribution::PowerLaw { alpha: 0.7 })
    );
    assert_eq!(
        parse_sampling("subset:20").unwrap(),
        Curriculum::single(Distribution::Subset { n: 20 })
    );
    assert_eq!(
        parse_sampling("subset:2000@50000,power:1@10,uniform").unwrap(),
        Curriculum::new(vec![
            (Distribution::Subset { n: 2000 }, Some(50_000)),
            (Distribution::PowerLaw { alpha: 1.0 }, Some(10)),
            (Distribution::Uniform, None),
        ])
        .unwrap()
    );
}

#[test]
fn format_round_trips() {
    for spec in [
        "uniform",
        "power:0.7",
        "power:0",
        "subset:3@5,uniform",
        "power:1.5@2,subset:9",
    ] {
        let parsed = parse_sampling(spec).unwrap();
        assert_eq!(format_sampling(&parsed), spec);
        assert_eq!(parse_sampling(&format_sampling(&parsed)).unwrap(), parsed);
    }
}

#[test]
fn bad_specs_name_the_option_and_the_problem() {
    let cases = [
        ("foo", "unknown sampler"),
        ("power", "unknown sampler"),
        ("power:x", "is not a number"),
        ("power:-1", "alpha must be >= 0 and finite, got -1"),
        ("power:inf", "alpha must be >= 0 and finite"),
        ("subset:0", "must be >= 1"),
        ("subset:-3", "is not an integer"),
        ("uniform@5", "last phase must not have"),
        ("subset:3,uniform", "lacks @<n_samples>"),
        ("subset:3@0,uniform", "is not an integer >= 1"),
        ("", "unknown sampler"),
    ];
    for (spec, why) in cases {
        let msg = err(spec);
        assert!(msg.starts_with("--sampling "), "{spec:?}: {msg}");
        assert!(msg.contains(why), "{spec:?}: {msg:?} lacks {why:?}");
        assert!(!msg.contains('\n'), "{spec:?}: not one line: {msg:?}");
    }
}
