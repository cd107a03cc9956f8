//! Builds the eBPF object (leak-ebpf) with aya-build; main embeds it.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|package| package.name.as_str() == "leak-ebpf")
        .ok_or_else(|| anyhow!("leak-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("leak-ebpf manifest has no parent"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )?;
    // With AYA_BUILD_SKIP=1 (the fuzz targets, which never load it) nothing was built: an
    // empty object lets the library compile, and loading it says why it is empty.
    let object = std::path::Path::new(&std::env::var("OUT_DIR")?).join("leak-ebpf");
    if !object.exists() {
        std::fs::write(&object, [])?;
    }
    Ok(())
}
