//! The compatibility checker against a table of evolution cases, at every level.

use streams::avro::compat::{Direction, Kind, Level, can_read, check};
use streams::avro::schema::Schema;

fn schema(text: &str) -> Schema {
    Schema::parse(text).unwrap_or_else(|e| panic!("test schema {text} is invalid: {e}"))
}

/// A record `R` with the given fields (JSON text of the fields array's items).
fn record(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#)
}

fn kinds(reader: &str, writer: &str) -> Vec<Kind> {
    can_read(&schema(reader), &schema(writer))
        .into_iter()
        .map(|p| p.kind)
        .collect()
}

fn readable(reader: &str, writer: &str) -> bool {
    can_read(&schema(reader), &schema(writer)).is_empty()
}

/// Whether `new` may follow `old` (oldest first) at `level`.
fn allowed(level: Level, new: &str, old: &[&str]) -> bool {
    let old: Vec<Schema> = old.iter().map(|s| schema(s)).collect();
    let refs: Vec<&Schema> = old.iter().collect();
    check(level, &schema(new), &refs).is_empty()
}

const A: &str = r#"{"name":"a","type":"int"}"#;
const B_DEFAULT: &str = r#"{"name":"b","type":"string","default":"x"}"#;
const B_REQUIRED: &str = r#"{"name":"b","type":"string"}"#;

#[test]
fn every_primitive_promotion_of_avro_is_accepted_and_no_other() {
    let promotions = [
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    ];
    let primitives = [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ];
    for writer in primitives {
        for reader in primitives {
            let expected = writer == reader || promotions.contains(&(writer, reader));
            let got = readable(&format!("\"{reader}\""), &format!("\"{writer}\""));
            assert_eq!(got, expected, "reader {reader}, writer {writer}");
        }
    }
    assert_eq!(kinds("\"int\"", "\"long\""), vec![Kind::TypeMismatch]);
}

#[test]
fn a_field_added_with_a_default_is_backward_but_without_one_is_not() {
    let old = record(A);
    let with_default = record(&format!("{A},{B_DEFAULT}"));
    let without = record(&format!("{A},{B_REQUIRED}"));
    assert!(allowed(Level::Backward, &with_default, &[&old]));
    assert!(!allowed(Level::Backward, &without, &[&old]));
    // Forward: the old reader ignores a field it does not know.
    assert!(allowed(Level::Forward, &without, &[&old]));
    assert!(allowed(Level::Full, &with_default, &[&old]));
    assert!(!allowed(Level::Full, &without, &[&old]));
    let problems = can_read(&schema(&without), &schema(&old));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, Kind::ReaderFieldMissingDefaultValue);
    assert_eq!(problems[0].location, "/fields/1");
    assert!(
        problems[0].message.contains("'b'"),
        "{}",
        problems[0].message
    );
}

#[test]
fn a_field_removed_is_forward_only_when_it_had_a_default() {
    let old_with_default = record(&format!("{A},{B_DEFAULT}"));
    let old_required = record(&format!("{A},{B_REQUIRED}"));
    let new = record(A);
    assert!(allowed(Level::Backward, &new, &[&old_required]));
    assert!(allowed(Level::Forward, &new, &[&old_with_default]));
    assert!(!allowed(Level::Forward, &new, &[&old_required]));
    assert!(!allowed(Level::Full, &new, &[&old_required]));
}

#[test]
fn a_field_renamed_with_an_alias_is_read_and_without_one_is_not() {
    let old = record(r#"{"name":"surname","type":"string"}"#);
    let aliased = record(r#"{"name":"family_name","type":"string","aliases":["surname"]}"#);
    let renamed = record(r#"{"name":"family_name","type":"string"}"#);
    assert!(allowed(Level::Backward, &aliased, &[&old]));
    assert_eq!(
        kinds(&renamed, &old),
        vec![Kind::ReaderFieldMissingDefaultValue]
    );
}

#[test]
fn a_type_renamed_needs_an_alias_and_namespaces_do_not_matter() {
    let old = r#"{"type":"record","name":"Old","namespace":"a","fields":[]}"#;
    let aliased =
        r#"{"type":"record","name":"New","namespace":"a","aliases":["a.Old"],"fields":[]}"#;
    let renamed = r#"{"type":"record","name":"New","namespace":"a","fields":[]}"#;
    let moved = r#"{"type":"record","name":"Old","namespace":"b","fields":[]}"#;
    assert!(readable(aliased, old));
    assert!(readable(moved, old), "Avro matches unqualified names");
    let problems = can_read(&schema(renamed), &schema(old));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, Kind::NameMismatch);
    assert_eq!(problems[0].location, "/name");
    // An enum and a fixed are named types too.
    assert_eq!(
        kinds(
            r#"{"type":"enum","name":"E2","symbols":["A"]}"#,
            r#"{"type":"enum","name":"E1","symbols":["A"]}"#
        ),
        vec![Kind::NameMismatch]
    );
    assert_eq!(
        kinds(
            r#"{"type":"fixed","name":"F2","size":4}"#,
            r#"{"type":"fixed","name":"F1","size":4}"#
        ),
        vec![Kind::NameMismatch]
    );
}

#[test]
fn enum_symbols_added_are_backward_and_removed_need_a_reader_default() {
    let abc = r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#;
    let ab = r#"{"type":"enum","name":"E","symbols":["A","B"]}"#;
    let ab_default = r#"{"type":"enum","name":"E","symbols":["A","B"],"default":"A"}"#;
    // Added symbol: the new reader knows every old symbol.
    assert!(allowed(Level::Backward, abc, &[ab]));
    // ...but the old reader meets C and has no default.
    assert!(!allowed(Level::Forward, abc, &[ab]));
    assert!(allowed(Level::Forward, abc, &[ab_default]));
    // Removed symbol.
    assert!(!allowed(Level::Backward, ab, &[abc]));
    assert!(allowed(Level::Backward, ab_default, &[abc]));
    let problems = can_read(&schema(ab), &schema(abc));
    assert_eq!(problems[0].kind, Kind::MissingEnumSymbols);
    assert_eq!(problems[0].location, "/symbols");
    assert!(
        problems[0].message.contains("[C]"),
        "{}",
        problems[0].message
    );
}

#[test]
fn union_branches_added_are_backward_and_removed_are_not() {
    let two = r#"["null","string"]"#;
    let three = r#"["null","string","int"]"#;
    assert!(allowed(Level::Backward, three, &[two]));
    assert!(!allowed(Level::Forward, three, &[two]));
    assert!(!allowed(Level::Backward, two, &[three]));
    let problems = can_read(&schema(two), &schema(three));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, Kind::MissingUnionBranch);
    assert_eq!(problems[0].location, "/2");
}

#[test]
fn a_plain_type_may_become_a_union_holding_it_and_back_only_if_nothing_else_was_written() {
    let plain = r#""string""#;
    let optional = r#"["null","string"]"#;
    let promoted = r#"["null","long"]"#;
    assert!(readable(optional, plain));
    assert!(!readable(plain, optional), "null may have been written");
    assert!(readable(plain, r#"["string"]"#));
    // A union branch can read by promotion.
    assert!(readable(promoted, r#""int""#));
    assert_eq!(
        kinds(r#"["null","int"]"#, plain),
        vec![Kind::MissingUnionBranch]
    );
}

#[test]
fn fixed_types_must_keep_their_size() {
    let f4 = r#"{"type":"fixed","name":"F","size":4}"#;
    let f8 = r#"{"type":"fixed","name":"F","size":8}"#;
    let problems = can_read(&schema(f8), &schema(f4));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, Kind::FixedSizeMismatch);
    assert_eq!(problems[0].location, "/size");
    assert!(readable(f4, f4));
}

#[test]
fn nested_arrays_and_maps_are_checked_all_the_way_down_with_their_path() {
    let old =
        record(r#"{"name":"m","type":{"type":"map","values":{"type":"array","items":"int"}}}"#);
    let widened =
        record(r#"{"name":"m","type":{"type":"map","values":{"type":"array","items":"long"}}}"#);
    let broken =
        record(r#"{"name":"m","type":{"type":"map","values":{"type":"array","items":"string"}}}"#);
    assert!(allowed(Level::Backward, &widened, &[&old]));
    assert!(
        !allowed(Level::Forward, &widened, &[&old]),
        "long does not narrow to int"
    );
    let problems = can_read(&schema(&broken), &schema(&old));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].location, "/fields/0/type/values/items");
    assert_eq!(
        kinds(
            r#"{"type":"array","items":"int"}"#,
            r#"{"type":"map","values":"int"}"#
        ),
        vec![Kind::TypeMismatch]
    );
}

#[test]
fn recursive_types_are_checked_without_looping() {
    let list = |extra: &str| {
        format!(
            r#"{{"type":"record","name":"Node","fields":[{{"name":"value","type":"int"}},{{"name":"next","type":["null","Node"],"default":null}}{extra}]}}"#
        )
    };
    let v1 = list("");
    let v2 = list(r#",{"name":"label","type":"string","default":""}"#);
    let v3 = list(r#",{"name":"label","type":"string"}"#);
    assert!(allowed(Level::FullTransitive, &v2, &[&v1]));
    let problems = can_read(&schema(&v3), &schema(&v1));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].location, "/fields/2");
}

#[test]
fn every_incompatibility_is_reported_not_only_the_first() {
    let old = record(
        r#"{"name":"a","type":"int"},{"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},{"name":"f","type":{"type":"fixed","name":"F","size":2}}"#,
    );
    let new = record(
        r#"{"name":"a","type":"string"},{"name":"e","type":{"type":"enum","name":"E","symbols":["X"]}},{"name":"f","type":{"type":"fixed","name":"F","size":3}},{"name":"g","type":"int"}"#,
    );
    let problems = can_read(&schema(&new), &schema(&old));
    let found: Vec<(Kind, &str)> = problems
        .iter()
        .map(|p| (p.kind, p.location.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (Kind::TypeMismatch, "/fields/0/type"),
            (Kind::MissingEnumSymbols, "/fields/1/type/symbols"),
            (Kind::FixedSizeMismatch, "/fields/2/type/size"),
            (Kind::ReaderFieldMissingDefaultValue, "/fields/3"),
        ]
    );
}

#[test]
fn transitive_levels_catch_what_each_step_hides() {
    // v1 -> v2 drops the required field b (backward fine: the reader ignores it);
    // v2 -> v3 adds b back with another type and a default (backward fine against v2),
    // but v3 cannot read v1's b, which was written as an int.
    let v1 = record(r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#);
    let v2 = record(r#"{"name":"a","type":"int"}"#);
    let v3 = record(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":""}"#);
    assert!(allowed(Level::Backward, &v2, &[&v1]));
    assert!(allowed(Level::Backward, &v3, &[&v1, &v2]));
    assert!(!allowed(Level::BackwardTransitive, &v3, &[&v1, &v2]));

    // Forward: every old reader must read the new data.
    let f1 = record(r#"{"name":"a","type":"int"}"#);
    let f2 = record(r#"{"name":"a","type":"int"},{"name":"c","type":"int","default":0}"#);
    let f3 = record(r#"{"name":"a","type":"long"},{"name":"c","type":"int","default":0}"#);
    // f3 writes a as long: f2 cannot read it, nor can f1.
    assert!(!allowed(Level::Forward, &f3, &[&f1, &f2]));
    let g1 = record(r#"{"name":"a","type":"int"},{"name":"d","type":"int"}"#);
    let g2 = record(r#"{"name":"a","type":"int"},{"name":"d","type":"int","default":1}"#);
    let g3 = record(r#"{"name":"a","type":"int"}"#);
    // g2 reads g3 data (d has a default); g1 requires d without default.
    assert!(allowed(Level::Forward, &g3, &[&g1, &g2]));
    assert!(!allowed(Level::ForwardTransitive, &g3, &[&g1, &g2]));
    assert!(allowed(Level::Full, &g3, &[&g1, &g2]));
    assert!(!allowed(Level::FullTransitive, &g3, &[&g1, &g2]));
}

#[test]
fn level_none_accepts_anything_and_every_level_has_both_verdicts() {
    let old = record(A);
    let good = record(&format!("{A},{B_DEFAULT}"));
    let bad = r#""string""#;
    for level in Level::ALL {
        assert!(
            allowed(level, &good, &[&old]),
            "{level} should accept an added defaulted field"
        );
        assert!(
            allowed(level, &good, &[]),
            "{level} should accept a first version"
        );
        let expected = level == Level::None;
        assert_eq!(
            allowed(level, bad, &[&old]),
            expected,
            "{level} and a record turned string"
        );
    }
}

#[test]
fn violations_name_the_direction_and_the_version() {
    let old = record(A);
    let new = record(&format!("{A},{B_REQUIRED}"));
    let v = check(
        Level::FullTransitive,
        &schema(&new),
        &[&schema(&old), &schema(&old)],
    );
    assert_eq!(v.len(), 2);
    assert!(v.iter().all(|v| v.direction == Direction::NewReadsOld));
    assert_eq!(v.iter().map(|v| v.previous).collect::<Vec<_>>(), vec![0, 1]);
}

#[test]
fn level_names_parse_in_any_case_and_unknown_ones_are_refused() {
    assert_eq!(
        "full_transitive".parse::<Level>(),
        Ok(Level::FullTransitive)
    );
    assert_eq!("BACKWARD".parse::<Level>(), Ok(Level::Backward));
    let e = "sideways".parse::<Level>().expect_err("not a level");
    assert!(
        e.to_string()
            .contains("'sideways' is not a compatibility level")
    );
}

/// A chain of `depth` records, each using the next one twice (once defined, once by name), the
/// last holding one field of type `leaf`: 2^depth paths through a schema of linear size.
fn doubling_chain(depth: usize, leaf: &str) -> Schema {
    let mut ty = format!(
        r#"{{"type":"record","name":"T{depth}","fields":[{{"name":"x","type":"{leaf}"}}]}}"#
    );
    for k in (0..depth).rev() {
        ty = format!(
            r#"{{"type":"record","name":"T{k}","fields":[{{"name":"a","type":{ty}}},{{"name":"b","type":"T{}"}}]}}"#,
            k + 1
        );
    }
    Schema::parse(&ty).expect("valid")
}

#[test]
fn a_type_used_along_exponentially_many_paths_is_checked_once_per_pair() {
    // 2^40 paths: checked path by path, this would not finish.
    let ints = doubling_chain(40, "int");
    let longs = doubling_chain(40, "long");
    let strings = doubling_chain(40, "string");
    assert!(check(Level::FullTransitive, &ints, &[&ints, &ints]).is_empty());
    assert!(check(Level::Backward, &longs, &[&ints]).is_empty());
    let found = check(Level::Full, &strings, &[&ints]);
    assert!(!found.is_empty());
    // Each direction lists as many as a check may, all of the one real problem.
    assert_eq!(found.len(), 2 * streams::avro::compat::MAX_REPORTED);
    assert!(
        found.iter().all(|v| v.problem.kind == Kind::TypeMismatch
            && v.problem.location.ends_with("/fields/0/type"))
    );
    let first = &found[0].problem.location;
    assert_eq!(
        first,
        &format!("{}/fields/0/type", "/fields/0/type".repeat(40))
    );
}

/// A chain of `length` records `{prefix}0` … each holding the next in a field (the last an
/// int), defined one after another as fields of a root record, so the JSON stays shallow
/// however long the chain.
fn chain(prefix: &str, length: usize) -> String {
    let mut fields = vec![format!(
        r#"{{"name":"f0","type":{{"type":"record","name":"{prefix}0","fields":[{{"name":"x","type":"int"}}]}}}}"#
    )];
    for k in 1..length {
        fields.push(format!(
            r#"{{"name":"f{k}","type":{{"type":"record","name":"{prefix}{k}","fields":[{{"name":"x","type":"{prefix}{}"}}]}}}}"#,
            k - 1
        ));
    }
    format!(
        r#"{{"type":"record","name":"Root","fields":[{}]}}"#,
        fields.join(",")
    )
}

#[test]
fn types_nested_deeper_than_the_limit_are_refused_however_shallow_the_json() {
    let limit = streams::avro::schema::MAX_NESTING;
    assert!(Schema::parse(&chain("C", limit - 2)).is_ok());
    let error = Schema::parse(&chain("C", limit + 1)).expect_err("too deep");
    assert!(error.reason.contains("nest more than 64"), "{error}");
    // A few hundred kilobytes: a checker or reader recursing along it would overflow a stack.
    assert!(Schema::parse(&chain("C", 5_000)).is_err());
}

#[test]
fn a_check_gives_up_past_its_depth_and_answers_incompatible_rather_than_overflow() {
    // Stored before the nesting limit, a 5,000-record chain still reaches the checker (the
    // registry's log replays with `parse_stored`). The chain is defined as the branches of a
    // union in one field and used by its last record in another, crosswise in reader and
    // writer, so the check meets the deep end first. On a 2 MiB stack, as tokio's blocking
    // pool runs it, it must answer.
    let n = 5_000;
    let definitions = {
        let mut records = vec![
            r#"{"type":"record","name":"R0","fields":[{"name":"f","type":"int"}]}"#.to_owned(),
        ];
        for k in 1..=n {
            records.push(format!(
                r#"{{"type":"record","name":"R{k}","fields":[{{"name":"f","type":"R{}"}}]}}"#,
                k - 1
            ));
        }
        format!(r#"["null",{}]"#, records.join(","))
    };
    let writer = format!(
        r#"{{"type":"record","name":"Top","fields":[{{"name":"b","type":{definitions}}},{{"name":"a","type":"R{n}"}}]}}"#
    );
    let reader = format!(
        r#"{{"type":"record","name":"Top","fields":[{{"name":"a","type":{definitions}}},{{"name":"b","type":["null","R{n}"]}}]}}"#
    );
    assert!(
        Schema::parse(&writer).is_err(),
        "new schemas that deep are refused"
    );
    let writer = Schema::parse_stored(&writer).expect("stored schemas are read");
    let reader = Schema::parse_stored(&reader).expect("stored schemas are read");
    let answer = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || can_read(&reader, &writer))
        .expect("thread")
        .join()
        .expect("no overflow");
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].kind, Kind::TooComplexToCheck);
}

/// A cycle of `length` records `{prefix}0` → `{prefix}1` → … → `{prefix}0`, each holding the
/// next in an array (so values end).
fn cycle(prefix: &str, length: usize) -> String {
    let mut ty = format!(
        r#"{{"type":"record","name":"{prefix}{}","fields":[{{"name":"next","type":{{"type":"array","items":"{prefix}0"}}}}]}}"#,
        length - 1
    );
    for k in (0..length - 1).rev() {
        ty = format!(
            r#"{{"type":"record","name":"{prefix}{k}","fields":[{{"name":"next","type":{{"type":"array","items":{ty}}}}}]}}"#
        );
    }
    ty
}

#[test]
fn two_recursive_types_that_lead_a_check_round_and_round_are_bounded() {
    // Cycles of 17 and 19 records: the pairs repeat only after 323 steps, each step a record
    // and an array deeper.
    let reader = schema(&cycle("R", 17));
    let writer = schema(&cycle("W", 19));
    let found = can_read(&reader, &writer);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].kind, Kind::TooComplexToCheck);
    assert_eq!(found[0].location, "/");
}

#[test]
fn a_named_writer_branch_is_compared_with_its_counterpart_only() {
    // Two unions of 2,000 records with other names: every writer branch is missing, found
    // without comparing it to every reader branch.
    let union = |prefix: &str| {
        let branches: Vec<String> = (0..2_000)
            .map(|k| {
                format!(
                    r#"{{"type":"record","name":"{prefix}{k}","fields":[{{"name":"x","type":"int"}}]}}"#
                )
            })
            .collect();
        schema(&format!("[{}]", branches.join(",")))
    };
    let found = can_read(&union("A"), &union("B"));
    assert_eq!(found.len(), streams::avro::compat::MAX_REPORTED);
    assert!(found.iter().all(|p| p.kind == Kind::MissingUnionBranch));
}
