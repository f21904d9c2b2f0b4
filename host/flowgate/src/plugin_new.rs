//! `flowgate plugin new`: writes a working plugin project in one of the four languages —
//! the WIT vendored, a manifest with a `[build]` table, the source, a README and test
//! cases for `flowgate plugin test`. Rust projects also get the SDK vendored, so a project
//! builds anywhere without this repository.

use std::path::Path;

use anyhow::{Context, bail};

use crate::plugin_build::{COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION, JCO_VERSION, Lang, PREVIEW2_SHIM_VERSION};

/// The WIT package, as flowgate was built with it.
const WIT: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("host.wit", include_str!("../../../wit/host.wit")),
    ("hooks.wit", include_str!("../../../wit/hooks.wit")),
    ("worlds.wit", include_str!("../../../wit/worlds.wit")),
];

const SDK_LIB: &str = include_str!("../../../sdk/src/lib.rs");
const SDK_CARGO: &str = r#"[package]
name = "flowgate-sdk"
version = "0.1.0"
edition = "2024"
publish = false
description = "Write flowgate plugins in Rust (vendored by `flowgate plugin new`)"

[dependencies]
wit-bindgen = { version = "0.61", default-features = false, features = ["macros", "realloc"] }
flowgate-sdk-macros = { path = "macros" }
"#;

const SDK_MACROS_LIB: &str = include_str!("../../../sdk/macros/src/lib.rs");
const SDK_MACROS_CARGO: &str = r##"[package]
name = "flowgate-sdk-macros"
version = "0.1.0"
edition = "2024"
publish = false
description = "#[flowgate_sdk::hooks] (vendored by `flowgate plugin new`)"

[lib]
proc-macro = true
"##;

const PLUGIN_TOML: &str = include_str!("../templates/common/plugin.toml");
const README: &str = include_str!("../templates/common/README.md");
const GITIGNORE: &str = include_str!("../templates/common/gitignore");
const CASES: &[(&str, &str)] = &[
    ("greets.toml", include_str!("../templates/common/greets.toml")),
    ("blocks.toml", include_str!("../templates/common/blocks.toml")),
];

/// The files of one language's project, beside the common ones.
fn language_files(lang: Lang) -> Vec<(&'static str, &'static str)> {
    match lang {
        Lang::Rust => vec![
            ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
            ("src/lib.rs", include_str!("../templates/rust/lib.rs")),
            ("flowgate-sdk/Cargo.toml", SDK_CARGO),
            ("flowgate-sdk/src/lib.rs", SDK_LIB),
            ("flowgate-sdk/macros/Cargo.toml", SDK_MACROS_CARGO),
            ("flowgate-sdk/macros/src/lib.rs", SDK_MACROS_LIB),
        ],
        Lang::Js => vec![
            ("package.json", include_str!("../templates/js/package.json")),
            ("src/plugin.js", include_str!("../templates/js/plugin.js")),
        ],
        Lang::Python => vec![
            ("app.py", include_str!("../templates/python/app.py")),
            ("requirements.txt", include_str!("../templates/python/requirements.txt")),
        ],
        Lang::C => vec![("src/plugin.c", include_str!("../templates/c/plugin.c"))],
    }
}

fn build_note(lang: Lang) -> String {
    match lang {
        Lang::Rust => "Needs Rust with the wasm32-wasip2 target (`rustup target add wasm32-wasip2`); \
                       `flowgate-sdk/` is the SDK, vendored."
            .to_owned(),
        Lang::Js => format!(
            "Needs Node.js; `flowgate plugin build` runs `npm install` the first time to fetch \
             @bytecodealliance/componentize-js {COMPONENTIZE_JS_VERSION}."
        ),
        Lang::Python => format!(
            "Needs componentize-py {COMPONENTIZE_PY_VERSION} on PATH: `pip install -r requirements.txt` \
             (in a virtualenv, or in `.venv/` here, which the build also looks in)."
        ),
        Lang::C => "Needs clang, lld and wasi-libc (Debian: `apt-get install clang lld wasi-libc \
                    libclang-rt-dev-wasm32`). Bindings are generated into build/bindings at each build."
            .to_owned(),
    }
}

/// The language's name for people.
pub fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Js => "JavaScript",
        Lang::Python => "Python",
        Lang::C => "C",
    }
}

fn lang_key(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "rust",
        Lang::Js => "js",
        Lang::Python => "python",
        Lang::C => "c",
    }
}

/// Writes the project for `name` into `dir`, which must not exist or be empty.
pub fn create(lang: Lang, name: &str, dir: &Path) -> anyhow::Result<()> {
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        bail!("plugin name {name:?}: use lowercase letters, digits and '-', starting with a letter");
    }
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not empty", dir.display());
    }
    let crate_name = name.replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{lang}}", lang_key(lang))
            .replace("{{lang_name}}", lang_name(lang))
            .replace("{{source}}", lang.default_source())
            .replace("{{componentize_js}}", COMPONENTIZE_JS_VERSION)
            .replace("{{componentize_py}}", COMPONENTIZE_PY_VERSION)
            .replace("{{jco}}", JCO_VERSION)
            .replace("{{preview2_shim}}", PREVIEW2_SHIM_VERSION)
            .replace("{{build_note}}", &build_note(lang))
    };
    let mut files: Vec<(String, String)> = vec![
        ("plugin.toml".to_owned(), fill(PLUGIN_TOML)),
        ("README.md".to_owned(), fill(README)),
        (".gitignore".to_owned(), GITIGNORE.to_owned()),
    ];
    files.extend(WIT.iter().map(|(file, text)| (format!("wit/{file}"), (*text).to_owned())));
    files.extend(CASES.iter().map(|(file, text)| (format!("tests/{file}"), fill(text))));
    for (file, text) in language_files(lang) {
        // The SDK and WIT are copied verbatim; only our templates have placeholders.
        let text = if file.starts_with("flowgate-sdk/") { text.to_owned() } else { fill(text) };
        files.push((file.to_owned(), text));
    }
    for (file, text) in files {
        let path = dir.join(&file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_have_no_unfilled_placeholders() {
        let dir = std::env::temp_dir().join(format!("flowgate-new-{}", std::process::id()));
        for lang in [Lang::Rust, Lang::Js, Lang::Python, Lang::C] {
            let project = dir.join(lang_key(lang));
            create(lang, "demo-plugin", &project).expect("create");
            let mut stack = vec![project.clone()];
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d).expect("dir").flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if !path.starts_with(project.join("flowgate-sdk")) {
                        let text = std::fs::read_to_string(&path).expect("text");
                        assert!(!text.contains("{{"), "{} keeps a placeholder", path.display());
                    }
                }
            }
            let manifest = crate::plugin_build::Project::open(&project).expect("the manifest parses");
            assert_eq!(manifest.build.lang, lang);
            assert!(create(lang, "demo-plugin", &project).is_err(), "refuses a non-empty directory");
        }
        assert!(create(Lang::C, "Bad Name", &dir.join("bad")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
