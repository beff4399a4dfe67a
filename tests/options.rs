//! Each handler's options, and each block's of the site file itself
//! (`global`, `site`, …), are declared once (`teebox::config::options`):
//! the declarations are sound, every declared option is read by its
//! decoder, and `teebox validate --explain` prints them.

use std::path::{Path, PathBuf};
use std::process::Command;

use teebox::config::options::{self, Place};
use teebox::handlers::{HandlerKind, REGISTRY};

/// Every handler, with its declared options.
fn declared() -> Vec<(&'static HandlerKind, &'static options::Table)> {
    REGISTRY.iter().map(|k| (k, k.options())).collect()
}

/// A route holding `handler` (and a terminal handler when it is not one).
fn site(handler: &str, terminal: bool) -> String {
    let end = if terminal {
        ""
    } else {
        "\n        respond 200"
    };
    format!("site \"127.0.0.1:0\" {{\n    route \"/*\" {{\n        {handler}{end}\n    }}\n}}\n")
}

/// The handler as the smallest valid node, with `option` (a child option
/// or a property, as written) added.
fn sample(name: &str, option: Option<(&str, Place)>) -> String {
    let child = |head: &str| match option {
        Some((o, Place::Child)) => format!("{head} {{ {o}; }}"),
        _ => head.to_string(),
    };
    let property = match option {
        Some((o, Place::Property)) => format!(" {o}"),
        _ => String::new(),
    };
    match name {
        "respond" => "respond 200".to_string(),
        "header" => "header { \"-Server\"; }".to_string(),
        "rewrite" if property.is_empty() => "rewrite \"/x\"".to_string(),
        "rewrite" => format!("rewrite{property}"),
        "request_body" if property.is_empty() => "request_body max_size=\"1MiB\"".to_string(),
        "request_body" => format!("request_body{property}"),
        "record" => child("record \"teebox-options-test.jsonl\""),
        "reverse_proxy" => child("reverse_proxy \"http://127.0.0.1:1\""),
        "mirror" => child("mirror \"http://127.0.0.1:1\""),
        other => panic!("tests/options.rs has no sample of `{other}`: add one"),
    }
}

#[test]
fn every_declaration_is_sound() {
    let declared = declared();
    assert!(declared.len() >= 6, "only {} declared", declared.len());
    for (kind, table) in declared {
        if let Err(why) = options::check_table(table) {
            panic!("`{}`: {why}", kind.name());
        }
    }
}

/// The smallest use of each handler is valid: every option its decoder
/// reads is in its table (reading one that is not is an error).
#[test]
fn every_option_read_is_declared() {
    for (kind, _) in declared() {
        let text = site(&sample(kind.name(), None), kind.is_terminal());
        if let Err(err) = teebox::config::parse(
            "probe.kdl",
            &text,
            std::env::temp_dir(),
            teebox::handlers::REGISTRY,
        ) {
            panic!("{}", err.render(teebox::config::Style::Plain));
        }
    }
}

/// An option written with a value no type takes (`#null`) is reported at
/// that option: every declared option is read by its handler.
#[test]
fn every_option_declared_is_read() {
    for (kind, table) in declared() {
        for d in table.iter() {
            let written = match d.place() {
                Place::Child => format!("{} #null", d.name()),
                Place::Property => format!("{}=#null", d.name()),
                Place::Argument | Place::Children => continue,
            };
            let node = sample(kind.name(), Some((&written, d.place())));
            let text = site(&node, kind.is_terminal());
            let at = text.find(&written).expect("the option is in the file");
            let problems = match teebox::config::parse(
                "probe.kdl",
                &text,
                std::env::temp_dir(),
                teebox::handlers::REGISTRY,
            ) {
                Ok(_) => panic!("`{written}` was taken by `{}`:\n{text}", kind.name()),
                Err(err) => err.problems,
            };
            assert!(
                problems.iter().any(|p| {
                    let offset = p.span().offset();
                    p.is_error() && (at..at + written.len()).contains(&offset)
                }),
                "`{written}` in `{}` is not reported where it is written: {problems:#?}",
                kind.name()
            );
        }
    }
}

fn teebox(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_teebox"))
        .args(args)
        .output()
        .expect("teebox runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `validate --explain NAME` prints each option of `table` on a line of its
/// own, with its declared default and description.
fn assert_explains(name: &str, table: &options::Table) {
    let (code, out, err) = teebox(&["validate", "--explain", name]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with(name), "{out}");
    for d in table.iter() {
        let shown = options::shown_name(*d);
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{shown}  ")))
            .unwrap_or_else(|| panic!("no line for `{shown}`:\n{out}"));
        assert!(line.contains(d.unset().shown()), "{line}");
        assert!(line.ends_with(d.about()), "{line}");
    }
}

#[test]
fn explain_prints_every_declared_option_with_its_default() {
    for (kind, table) in declared() {
        assert_explains(kind.name(), table);
    }
}

/// `teebox validate --explain | head` closes the pipe early: the output
/// stops quietly, with no panic (as `println!` gave) and a success status.
#[test]
fn explain_into_a_closed_pipe_stops_quietly() {
    for args in [
        &["validate", "--explain"][..],
        &["validate", "--explain", "mirror"],
        &[
            "fmt",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/site.kdl"),
        ],
    ] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader); // every write now fails with a broken pipe
        let out = Command::new(env!("CARGO_BIN_EXE_teebox"))
            .args(args)
            .stdout(writer)
            .output()
            .expect("teebox runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

#[test]
fn explain_without_a_name_lists_the_handlers() {
    let (code, out, _) = teebox(&["validate", "--explain"]);
    assert_eq!(code, 0);
    for kind in REGISTRY {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().next() == Some(kind.name())),
            "`{}` is not listed:\n{out}",
            kind.name()
        );
    }
}

#[test]
fn explain_an_unknown_handler_suggests_the_nearest_and_exits_2() {
    let (code, out, err) = teebox(&["validate", "--explain", "revers_proxy"]);
    assert_eq!(code, 2);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("unknown handler `revers_proxy`"), "{err}");
    assert!(err.contains("did you mean `reverse_proxy`?"), "{err}");
    let (code, _, err) = teebox(&["validate", "--explain", "zzzz"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("the handlers are: respond, reverse_proxy"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// The site file's own blocks.

/// Where the sample `tls` finds its certificate and key.
fn valid_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/valid")
}

fn parse(text: &str) -> Result<(), Vec<teebox::config::Problem>> {
    teebox::config::parse("probe.kdl", text, valid_dir(), REGISTRY)
        .map(|_| ())
        .map_err(|err| err.problems)
}

/// A site file holding the smallest valid `block`, with `option` (a child
/// option or a property, as written) added to it.
fn block_sample(block: &str, option: Option<(&str, Place)>) -> String {
    let child = match option {
        Some((o, Place::Child)) => o,
        _ => "",
    };
    let property = match option {
        Some((o, Place::Property)) => o,
        _ => "",
    };
    let route = "route \"/*\" {\n        respond 200\n    }";
    let site = format!("site \"127.0.0.1:0\" {{\n    {route}\n}}\n");
    let global = |inner: String| format!("global {{\n    {inner}\n}}\n{site}");
    match block {
        "global" => global(child.to_string()),
        "log" => global(format!("log {property}")),
        "limits" => global(format!("limits {{ {child} }}")),
        "admin" => global(format!("admin \"127.0.0.1:2019\" {{ {child} }}")),
        "site" => format!("site \"127.0.0.1:0\" {{\n    {child}\n    {route}\n}}\n"),
        "tls" => {
            // The property tried stands for the sample's own.
            let given = property.split('=').next().unwrap_or_default();
            let mut tls = vec!["tls".to_string()];
            for (name, path) in [("cert", "certs/site.pem"), ("key", "certs/site-key.pem")] {
                if name != given {
                    tls.push(format!("{name}=\"{path}\""));
                }
            }
            tls.push(property.to_string());
            format!(
                "site \"127.0.0.1:0\" {{\n    {}\n    {route}\n}}\n",
                tls.join(" ").trim_end()
            )
        }
        other => panic!("tests/options.rs has no sample of the block `{other}`: add one"),
    }
}

#[test]
fn every_block_declaration_is_sound_and_named_apart_from_the_handlers() {
    let blocks = teebox::config::BLOCKS;
    assert!(blocks.len() >= 6, "only {} blocks declared", blocks.len());
    for block in blocks {
        if let Err(why) = options::check_table(block.options) {
            panic!("`{}`: {why}", block.name);
        }
        assert!(
            REGISTRY.find(block.name).is_none(),
            "`{}` names a block and a handler: --explain could not tell them apart",
            block.name
        );
    }
}

/// The smallest use of each block is valid: every option its decoder reads
/// is in its table (reading one that is not is an error).
#[test]
fn every_block_option_read_is_declared() {
    for block in teebox::config::BLOCKS {
        let text = block_sample(block.name, None);
        if let Err(problems) = parse(&text) {
            panic!("`{}`:\n{text}\n{problems:#?}", block.name);
        }
    }
}

/// An option written with a value no type takes (`#null`) is reported at
/// that option: every declared option of a block is read by its decoder.
#[test]
fn every_block_option_declared_is_read() {
    for block in teebox::config::BLOCKS {
        for d in block.options.iter() {
            let written = match d.place() {
                Place::Child => format!("{} #null", d.name()),
                Place::Property => format!("{}=#null", d.name()),
                Place::Argument | Place::Children => continue,
            };
            let text = block_sample(block.name, Some((&written, d.place())));
            let at = text.find(&written).expect("the option is in the file");
            let problems = match parse(&text) {
                Ok(()) => panic!("`{written}` was taken by `{}`:\n{text}", block.name),
                Err(problems) => problems,
            };
            assert!(
                problems.iter().any(|p| {
                    let offset = p.span().offset();
                    p.is_error() && (at..at + written.len()).contains(&offset)
                }),
                "`{written}` in `{}` is not reported where it is written: {problems:#?}",
                block.name
            );
        }
    }
}

#[test]
fn explain_prints_every_block_s_options_with_their_defaults() {
    for block in teebox::config::BLOCKS {
        assert_explains(block.name, block.options);
    }
}

#[test]
fn explain_without_a_name_lists_the_blocks_too() {
    let (code, out, _) = teebox(&["validate", "--explain"]);
    assert_eq!(code, 0);
    for block in teebox::config::BLOCKS {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().next() == Some(block.name)),
            "`{}` is not listed:\n{out}",
            block.name
        );
    }
    let (code, _, err) = teebox(&["validate", "--explain", "glbal"]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean `global`?"), "{err}");
}
