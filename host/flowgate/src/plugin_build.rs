//! `flowgate plugin build`: turns a plugin project (a directory with a `plugin.toml` whose
//! `[build]` table names the language) into the component its manifest's `wasm` points at.
//!
//! Rust goes through cargo (`wasm32-wasip2`), JavaScript through componentize-js (Node),
//! Python through componentize-py, and C through wit-bindgen's C generator, clang with
//! wasi-libc, and wit-component with the WASI preview1 reactor adapter — the generator
//! and the componentizer are linked into flowgate, so a C author needs only clang.
//! Not here: loading the result (that is the runtime's `load`, which `main` calls after).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The languages `plugin new` and `plugin build` know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// Rust with the flowgate-sdk crate (cargo, wasm32-wasip2).
    Rust,
    /// JavaScript with componentize-js.
    #[serde(alias = "javascript")]
    #[value(alias = "javascript")]
    Js,
    /// Python with componentize-py.
    #[serde(alias = "py")]
    #[value(alias = "py")]
    Python,
    /// C with wit-bindgen's C generator, clang and wasi-libc.
    C,
}

impl Lang {
    /// The entry source file a project of this language has by default.
    pub fn default_source(self) -> &'static str {
        match self {
            Lang::Rust => "src/lib.rs",
            Lang::Js => "src/plugin.js",
            Lang::Python => "app.py",
            Lang::C => "src/plugin.c",
        }
    }
}

/// The `[build]` table of a plugin.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    /// The project's language.
    pub lang: Lang,
    /// Source files (JS, Python: the entry module; C: every `.c` file). Default per language.
    #[serde(default)]
    pub source: Sources,
    /// The WIT world the plugin targets (default `http-plugin`).
    pub world: Option<String>,
    /// The WIT directory (default `wit`).
    pub wit: Option<PathBuf>,
    /// A shell command to run instead of the built-in recipe (Spin's `build.command`).
    pub command: Option<String>,
}

impl BuildSection {
    /// A project without a `[build]` table: the language its files show, with defaults.
    fn infer(dir: &Path) -> Option<BuildSection> {
        let lang = [Lang::Rust, Lang::Js, Lang::Python, Lang::C].into_iter().find(|lang| {
            let marker = match lang {
                Lang::Rust => "Cargo.toml",
                Lang::Js => "package.json",
                Lang::Python | Lang::C => lang.default_source(),
            };
            dir.join(marker).is_file()
        })?;
        Some(BuildSection { lang, source: Sources::Default, world: None, wit: None, command: None })
    }
}

/// One source file or several.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum Sources {
    /// Not given: the language's default.
    #[default]
    Default,
    /// One file.
    One(PathBuf),
    /// Several files.
    Many(Vec<PathBuf>),
}

/// A plugin project: where it is, what to build, where the component goes.
pub struct Project {
    /// The directory holding plugin.toml.
    pub dir: PathBuf,
    /// The plugin.toml.
    pub manifest_path: PathBuf,
    /// The component the manifest loads.
    pub wasm: PathBuf,
    /// The plugin's name.
    pub name: String,
    /// How to build it.
    pub build: BuildSection,
}

impl Project {
    /// Reads a project from its directory or its plugin.toml.
    pub fn open(path: &Path) -> anyhow::Result<Project> {
        let manifest_path = if path.is_dir() { path.join("plugin.toml") } else { path.to_owned() };
        let manifest_path = std::fs::canonicalize(&manifest_path)
            .with_context(|| format!("{} (is this a plugin project?)", manifest_path.display()))?;
        let text = std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("cannot read {} (is this a plugin project?)", manifest_path.display()))?;
        let manifest = flowgate_runtime::Manifest::parse(&text, &manifest_path)
            .with_context(|| format!("{}", manifest_path.display()))?;
        let table: toml::Table = toml::from_str(&text).with_context(|| format!("{}", manifest_path.display()))?;
        let dir = manifest_path.parent().context("plugin.toml has no directory")?.to_owned();
        let build: BuildSection = match table.get("build") {
            Some(build) => build.clone().try_into().with_context(|| format!("{}: [build]", manifest_path.display()))?,
            None => BuildSection::infer(&dir).with_context(|| {
                format!(
                    "{}: no [build] table, and no Cargo.toml, package.json, app.py or src/plugin.c to guess from: \
                     add [build] with lang = \"rust\", \"js\", \"python\" or \"c\"",
                    manifest_path.display()
                )
            })?,
        };
        Ok(Project { dir, manifest_path, wasm: manifest.wasm, name: manifest.name, build })
    }

    fn sources(&self) -> Vec<PathBuf> {
        match &self.build.source {
            Sources::Default => vec![PathBuf::from(self.build.lang.default_source())],
            Sources::One(p) => vec![p.clone()],
            Sources::Many(ps) => ps.clone(),
        }
    }

    fn world(&self) -> &str {
        self.build.world.as_deref().unwrap_or("http-plugin")
    }

    fn wit_dir(&self) -> PathBuf {
        self.dir.join(self.build.wit.as_deref().unwrap_or(Path::new("wit")))
    }

    /// Whether the component is newer than every file of the project.
    pub fn up_to_date(&self) -> bool {
        let Ok(built) = std::fs::metadata(&self.wasm).and_then(|m| m.modified()) else { return false };
        newest_input(&self.dir, &self.wasm).is_some_and(|newest| newest <= built)
    }
}

/// Directories that hold outputs or installed tools, never sources.
const SKIPPED_DIRS: &[&str] = &["target", "node_modules", "build", ".venv", "venv", "__pycache__", ".git"];

fn newest_input(dir: &Path, output: &Path) -> Option<SystemTime> {
    let mut newest = None::<SystemTime>;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if !SKIPPED_DIRS.iter().any(|s| name == *s) {
                    stack.push(path);
                }
            } else if path != output && path.extension().is_none_or(|e| e != "wasm") {
                let modified = meta.modified().ok()?;
                newest = Some(newest.map_or(modified, |n| n.max(modified)));
            }
        }
    }
    newest
}

/// What a build produced.
pub struct Built {
    /// The component.
    pub wasm: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Wall time of the build.
    pub took: std::time::Duration,
}

/// Builds the project's component.
pub fn build(project: &Project) -> anyhow::Result<Built> {
    let started = Instant::now();
    if let Some(parent) = project.wasm.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match (&project.build.command, project.build.lang) {
        (Some(command), _) => {
            run(Command::new("sh").arg("-c").arg(command).current_dir(&project.dir), "build.command")?
        }
        (None, Lang::Rust) => build_rust(project)?,
        (None, Lang::Js) => build_js(project)?,
        (None, Lang::Python) => build_python(project)?,
        (None, Lang::C) => build_c(project)?,
    }
    let size = std::fs::metadata(&project.wasm)
        .with_context(|| format!("the build did not write {}", project.wasm.display()))?
        .len();
    Ok(Built { wasm: project.wasm.clone(), size, took: started.elapsed() })
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("cannot run {what} ({:?})", command.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Finds a program on PATH.
fn on_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file())
}

fn build_rust(project: &Project) -> anyhow::Result<()> {
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(project.dir.join("Cargo.toml"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo (install Rust with rustup, then `rustup target add wasm32-wasip2`)")?;
    if !output.status.success() {
        bail!("cargo build failed ({}); is the target installed? `rustup target add wasm32-wasip2`", output.status);
    }
    let manifest = std::fs::canonicalize(project.dir.join("Cargo.toml"))?;
    let wasm = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["manifest_path"].as_str().is_some_and(|p| Path::new(p) == manifest))
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
        .context("cargo built no .wasm: is the crate a cdylib (`crate-type = [\"cdylib\"]`)?")?;
    // The same file under another name (a workspace member whose manifest points into the
    // workspace's target/) must not be copied onto itself: that would truncate it.
    let same = std::fs::canonicalize(&project.wasm).is_ok_and(|w| std::fs::canonicalize(&wasm).is_ok_and(|a| a == w));
    if !same {
        std::fs::copy(&wasm, &project.wasm)
            .with_context(|| format!("cannot copy {} to {}", wasm.display(), project.wasm.display()))?;
    }
    Ok(())
}

/// Pinned in the `plugin new` template and in plugins/package.json.
pub const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js";
/// The componentize-js version flowgate's templates pin.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// componentize-js imports preview2-shim without declaring it and takes jco by range;
/// projects pin both so npm lays them out the same everywhere.
pub const JCO_VERSION: &str = "1.35.0";
/// See [`JCO_VERSION`].
pub const PREVIEW2_SHIM_VERSION: &str = "0.25.0";
/// The componentize-py version flowgate's templates pin.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// Looks for componentize-js in `node_modules` here or in a parent directory (Node's rule).
fn find_componentize_js(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().map(|d| d.join("node_modules").join(COMPONENTIZE_JS)).find(|p| p.join("package.json").is_file())
}

const COMPONENTIZE_JS_SCRIPT: &str = r#"
const [pkg, sourcePath, witPath, worldName, out] = process.argv.slice(-5);
const { componentize } = await import(pkg);
const { writeFile } = await import("node:fs/promises");
const { component } = await componentize({
  sourcePath, witPath, worldName,
  // No wasi:http: a plugin reaches the network only through flowgate's outbound-http.
  disableFeatures: ["http", "fetch-event"],
});
await writeFile(out, component);
"#;

fn build_js(project: &Project) -> anyhow::Result<()> {
    let package = match find_componentize_js(&project.dir) {
        Some(p) => p,
        None if project.dir.join("package.json").is_file() => {
            eprintln!("flowgate: {COMPONENTIZE_JS} is not installed here: running `npm install`");
            run(
                Command::new("npm").args(["install", "--no-audit", "--no-fund"]).current_dir(&project.dir),
                "npm install",
            )?;
            find_componentize_js(&project.dir).context("npm install did not install {COMPONENTIZE_JS}")?
        }
        None => bail!(
            "{COMPONENTIZE_JS} not found in node_modules here or above: `npm install --save-dev {COMPONENTIZE_JS}@{COMPONENTIZE_JS_VERSION}`"
        ),
    };
    let entry = package_entry(&package)?;
    let [source] = project
        .sources()
        .try_into()
        .map_err(|_| anyhow::anyhow!("[build] source: JavaScript takes one entry module"))?;
    let url = format!("file://{}", entry.display());
    run(
        Command::new("node")
            .args(["--input-type=module", "-e", COMPONENTIZE_JS_SCRIPT, "--"])
            .arg(url)
            .arg(&source)
            .arg(project.build.wit.as_deref().unwrap_or(Path::new("wit")))
            .arg(project.world())
            .arg(&project.wasm)
            .current_dir(&project.dir),
        "componentize-js (node)",
    )
}

/// The module a package's `exports` (or `main`) names.
fn package_entry(package: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(package.join("package.json"))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let exports = &json["exports"];
    let entry = exports["."]["import"]
        .as_str()
        .or_else(|| exports["."]["default"].as_str())
        .or_else(|| exports["."].as_str())
        .or_else(|| exports["import"].as_str())
        .or_else(|| exports.as_str())
        .or_else(|| json["main"].as_str())
        .context("componentize-js's package.json names no entry module")?;
    Ok(package.join(entry))
}

fn build_python(project: &Project) -> anyhow::Result<()> {
    let program = std::env::var_os("FLOWGATE_COMPONENTIZE_PY")
        .map(PathBuf::from)
        .or_else(|| on_path("componentize-py"))
        .or_else(|| Some(project.dir.join(".venv/bin/componentize-py")).filter(|p| p.is_file()))
        .with_context(|| {
            format!(
                "componentize-py not found (looked at $FLOWGATE_COMPONENTIZE_PY, PATH and .venv/ in the project): \
                 `pip install componentize-py=={COMPONENTIZE_PY_VERSION}`"
            )
        })?;
    let [source] =
        project.sources().try_into().map_err(|_| anyhow::anyhow!("[build] source: Python takes one entry module"))?;
    let module = source.file_stem().context("[build] source names no module")?.to_owned();
    let source_dir = project.dir.join(source.parent().unwrap_or(Path::new("")));
    run(
        Command::new(program)
            .arg("-d")
            .arg(project.wit_dir())
            .arg("-w")
            .arg(project.world())
            .arg("componentize")
            .arg(module)
            .arg("-p")
            .arg(source_dir)
            .arg("-o")
            .arg(&project.wasm)
            .current_dir(&project.dir),
        "componentize-py",
    )
}

/// Where wasi-libc's sysroot is: `WASI_SYSROOT` or a wasi-sdk's; `None` when clang finds
/// it by itself (Debian's clang does, for Debian's wasi-libc).
fn wasi_sysroot() -> Option<PathBuf> {
    std::env::var_os("WASI_SYSROOT")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/opt/wasi-sdk/share/wasi-sysroot")).filter(|p| p.is_dir()))
}

fn clang() -> anyhow::Result<PathBuf> {
    if let Some(cc) = std::env::var_os("FLOWGATE_CLANG") {
        return Ok(cc.into());
    }
    ["clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14"]
        .iter()
        .find_map(|c| on_path(c))
        .context("clang not found on PATH: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32")
}

fn build_c(project: &Project) -> anyhow::Result<()> {
    use wit_bindgen_core::wit_parser::Resolve;

    let out = project.dir.join("build");
    let bindings = out.join("bindings");
    std::fs::create_dir_all(&bindings).with_context(|| format!("cannot create {}", bindings.display()))?;

    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_dir(project.wit_dir()).context("cannot read the WIT")?;
    let world = resolve.select_world(&[package], Some(project.world())).context("[build] world")?;
    let mut files = wit_bindgen_core::Files::default();
    // Borrowed handles are dropped by the bindings when a hook returns, as the
    // component model requires, so C authors never have to.
    let options = wit_bindgen_c::Opts { autodrop_borrows: wit_bindgen_c::Enabled::Yes, ..Default::default() };
    options.build().generate(&mut resolve, world, &mut files).context("wit-bindgen c")?;
    let mut generated = Vec::new();
    for (name, contents) in files.iter() {
        let path = bindings.join(name);
        std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
        if name.ends_with(".c") || name.ends_with(".o") {
            generated.push(path);
        }
    }

    let core = out.join(format!("{}.core.wasm", project.name.replace('-', "_")));
    let mut clang = Command::new(clang()?);
    clang.arg("--target=wasm32-wasi");
    if let Some(sysroot) = wasi_sysroot() {
        clang.arg(format!("--sysroot={}", sysroot.display()));
    }
    run(
        clang
            .args(["-O2", "-mexec-model=reactor", "-Wall", "-Wno-unused-function"])
            .arg("-I")
            .arg(&bindings)
            .args(project.sources())
            .args(&generated)
            .arg("-o")
            .arg(&core)
            .current_dir(&project.dir),
        "clang (needs lld and wasi-libc: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32)",
    )?;
    let module = std::fs::read(&core).with_context(|| format!("cannot read {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .context("wit-component: the core module")?
        .adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )
        .context("wit-component: the WASI adapter")?
        .validate(true)
        .encode()
        .context("wit-component: making the component")?;
    std::fs::write(&project.wasm, component).with_context(|| format!("cannot write {}", project.wasm.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy refuses a `[build]` key outside `BUILD_KEYS`: each of them is one of
    /// `BuildSection`'s.
    #[test]
    fn every_build_key_the_proxy_accepts_is_a_build_field() {
        let mut table = toml::Table::new();
        for key in flowgate_runtime::manifest::BUILD_KEYS {
            let value = match key {
                "lang" => toml::Value::from("c"),
                "source" => toml::Value::Array(vec![toml::Value::from("a.c")]),
                _ => toml::Value::from("x"),
            };
            table.insert(key.to_owned(), value);
        }
        let section: BuildSection = table.try_into().expect("every key is a field");
        assert_eq!(section.command.as_deref(), Some("x"));
    }
}
