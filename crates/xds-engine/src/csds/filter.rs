//! A CSDS request's `node_matchers`: checked once per request, then matched against each
//! Envoy's node id.

use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{NodeMatcher, StringMatcher};
use tonic::Status;

/// The most `node_matchers` one request may carry.
pub(crate) const MAX_NODE_MATCHERS: usize = 16;

/// The most memory one `safe_regex` may take, compiled and (separately) for its matching cache.
const REGEX_SIZE_LIMIT: usize = 128 * 1024;

/// The request's node matchers, checked once.
pub(crate) struct NodeFilter {
    /// `None`: every node.
    any_of: Option<Vec<IdMatch>>,
}

enum IdMatch {
    Any,
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(regex::Regex),
}

impl NodeFilter {
    pub(crate) fn new(matchers: &[NodeMatcher]) -> Result<Self, Status> {
        if matchers.is_empty() {
            return Ok(NodeFilter { any_of: None });
        }
        if matchers.len() > MAX_NODE_MATCHERS {
            return Err(Status::invalid_argument(format!(
                "node_matchers: {} matchers, at most {MAX_NODE_MATCHERS} are accepted (one safe_regex can say more)",
                matchers.len()
            )));
        }
        let mut any_of = Vec::with_capacity(matchers.len());
        for m in matchers {
            if !m.node_metadatas.is_empty() {
                return Err(Status::invalid_argument(
                    "node_matchers: node_metadatas is not supported (match on node_id)",
                ));
            }
            any_of.push(match &m.node_id {
                None => IdMatch::Any,
                Some(s) => IdMatch::new(s)?,
            });
        }
        Ok(NodeFilter { any_of: Some(any_of) })
    }

    pub(crate) fn matches(&self, node_id: &str) -> bool {
        match &self.any_of {
            None => true,
            Some(ms) => ms.iter().any(|m| m.matches(node_id)),
        }
    }
}

impl IdMatch {
    fn new(s: &StringMatcher) -> Result<Self, Status> {
        let ic = s.ignore_case;
        let fold = |v: &str| if ic { v.to_lowercase() } else { v.to_string() };
        Ok(match &s.match_pattern {
            Some(MatchPattern::Exact(v)) => IdMatch::Exact(fold(v), ic),
            Some(MatchPattern::Prefix(v)) => IdMatch::Prefix(fold(v), ic),
            Some(MatchPattern::Suffix(v)) => IdMatch::Suffix(fold(v), ic),
            Some(MatchPattern::Contains(v)) => IdMatch::Contains(fold(v), ic),
            Some(MatchPattern::SafeRegex(r)) => {
                let re = regex::RegexBuilder::new(&format!("^(?:{})$", r.regex))
                    .case_insensitive(ic)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| Status::invalid_argument(format!("node_matchers: bad safe_regex: {e}")))?;
                IdMatch::Regex(re)
            }
            Some(MatchPattern::Custom(_)) => {
                return Err(Status::invalid_argument(
                    "node_matchers: custom string matchers are not supported",
                ))
            }
            None => return Err(Status::invalid_argument("node_matchers: node_id has no pattern")),
        })
    }

    fn matches(&self, id: &str) -> bool {
        let folded = |ic: bool| {
            if ic {
                std::borrow::Cow::Owned(id.to_lowercase())
            } else {
                std::borrow::Cow::Borrowed(id)
            }
        };
        match self {
            IdMatch::Any => true,
            IdMatch::Exact(v, ic) => folded(*ic) == v.as_str(),
            IdMatch::Prefix(v, ic) => folded(*ic).starts_with(v.as_str()),
            IdMatch::Suffix(v, ic) => folded(*ic).ends_with(v.as_str()),
            IdMatch::Contains(v, ic) => folded(*ic).contains(v.as_str()),
            IdMatch::Regex(re) => re.is_match(id),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn exact(id: &str) -> NodeMatcher {
        matcher(MatchPattern::Exact(id.into()), false)
    }

    pub(crate) fn matcher(p: MatchPattern, ignore_case: bool) -> NodeMatcher {
        NodeMatcher {
            node_id: Some(StringMatcher {
                match_pattern: Some(p),
                ignore_case,
            }),
            node_metadatas: vec![],
        }
    }

    #[test]
    fn node_matchers_select_by_id_with_or_semantics() {
        let f = |ms: Vec<NodeMatcher>| NodeFilter::new(&ms).unwrap_or_else(|e| panic!("{e}"));
        assert!(f(vec![]).matches("anything"));
        let two = f(vec![exact("a"), matcher(MatchPattern::Prefix("olt-".into()), false)]);
        assert!(two.matches("a"));
        assert!(two.matches("olt-1"));
        assert!(!two.matches("ab"));
        assert!(!two.matches("OLT-1"));
        let ic = f(vec![matcher(MatchPattern::Prefix("OLT-".into()), true)]);
        assert!(ic.matches("olt-7"));
        let re = f(vec![matcher(
            MatchPattern::SafeRegex(envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: "olt-[0-9]+".into(),
                ..Default::default()
            }),
            false,
        )]);
        assert!(re.matches("olt-12"));
        assert!(!re.matches("olt-12x"), "safe_regex matches the whole id");
        assert!(f(vec![matcher(MatchPattern::Suffix("-b".into()), false)]).matches("a-b"));
        assert!(f(vec![matcher(MatchPattern::Contains("x".into()), false)]).matches("axb"));
        let meta = NodeMatcher {
            node_id: None,
            node_metadatas: vec![Default::default()],
        };
        let err = NodeFilter::new(&[meta]).err().expect("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("node_metadatas"), "{}", err.message());
    }

    #[test]
    fn too_many_matchers_or_a_huge_regex_are_refused() {
        let many: Vec<NodeMatcher> = (0..=MAX_NODE_MATCHERS).map(|i| exact(&format!("n{i}"))).collect();
        let err = NodeFilter::new(&many).err().expect("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("at most 16"), "{}", err.message());
        assert!(NodeFilter::new(&many[..MAX_NODE_MATCHERS]).is_ok());

        // A regex whose compiled program is far beyond the limit.
        let huge = matcher(
            MatchPattern::SafeRegex(envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: "[a-z]{1000}[0-9]{1000}".into(),
                ..Default::default()
            }),
            false,
        );
        let err = NodeFilter::new(&[huge]).err().expect("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("bad safe_regex"), "{}", err.message());
    }
}
