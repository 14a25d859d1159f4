//! Named choices (methods, allocators, scorers, decoding eviction): one declaration gives
//! the enum, its names, case-insensitive parsing with an error that lists the valid names,
//! serde as the name, and (feature `clap`) a `clap::ValueEnum` for command-line flags.

use crate::error::ConfigError;

/// Parses `text` as one of `all`, ignoring case and surrounding spaces; `what` names the
/// kind of choice in the error.
pub(crate) fn parse_name<T: Copy>(
    what: &'static str,
    text: &str,
    all: &[(T, &'static str)],
) -> Result<T, ConfigError> {
    let wanted = text.trim().to_ascii_lowercase();
    all.iter()
        .find(|(_, name)| *name == wanted)
        .map(|(kind, _)| *kind)
        .ok_or_else(|| ConfigError::UnknownName {
            what,
            name: text.to_string(),
            valid: all
                .iter()
                .map(|(_, name)| *name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Declares a fieldless enum whose variants have fixed lower-case names.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every choice with its name, in declaration order.
            pub const ALL: &'static [($name, &'static str)] = &[$(($name::$variant, $text)),+];

            /// The name, as written in flags, settings files and reports.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::error::ConfigError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                $crate::names::parse_name($what, text, Self::ALL)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "clap")]
        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($name::$variant),+]
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.name()))
            }
        }
    };
}

pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    use crate::{AllocatorKind, DecodeEviction, Method, ScorerKind};

    #[test]
    fn names_round_trip_ignoring_case_and_errors_list_the_valid_ones() {
        for &(kind, name) in Method::ALL {
            assert_eq!(name.parse::<Method>().unwrap(), kind);
            assert_eq!(name.to_uppercase().parse::<Method>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Method>(&json).unwrap(), kind);
        }
        assert_eq!(
            serde_json::from_str::<ScorerKind>("\"SnapKV\"").unwrap(),
            ScorerKind::SnapKv
        );
        assert_eq!(
            " None ".parse::<DecodeEviction>().unwrap(),
            DecodeEviction::None
        );
        let err = "pyramids".parse::<AllocatorKind>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown allocator \"pyramids\"; valid names: uniform, pyramid, preference, static"
        );
        let err = serde_json::from_str::<Method>("\"snap\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("full, streaming, h2o, tova, snapkv, pyramidkv, cake"),
            "{err}"
        );
    }
}
