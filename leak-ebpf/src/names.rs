//! The kernel side's names for what user space finds by name: maps (named after their
//! statics: aya's `#[map]` without `name`), globals (`no_mangle` statics) and programs
//! (named after their functions). Each is checked against leak-common's constant when this
//! crate builds, so the two sides cannot spell one differently.

/// Fails the build unless the map, global or program `$item` is named `$name`, a
/// leak-common constant. `$item` is referenced, so it must exist under that name.
macro_rules! named {
    ($item:ident, $name:expr) => {
        const _: () = {
            let _ = &$item;
            assert!(
                $crate::names::same(stringify!($item), $name),
                concat!(stringify!($item), " is not named as ", stringify!($name))
            );
        };
    };
}

/// `a == b`, in a const context.
pub const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
