//! The hosts a plugin declared, as a matcher.

/// One declared host: exact (`api.example.com`, `api.example.com:8443`) or a suffix pattern
/// (`*.example.com`, any subdomain but not `example.com` itself). Without a port, only https's
/// default port 443 matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact { host: String, port: u16 },
    Subdomains { suffix: String, port: u16 },
}

/// The set of hosts one plugin may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    patterns: Vec<Pattern>,
}

impl HostPolicy {
    /// Builds the policy from the description's `hosts`, already validated by its schema.
    pub fn new<S: AsRef<str>>(hosts: &[S]) -> Self {
        Self::with_default_port(hosts, 443)
    }

    /// Builds a policy whose hosts without a port match `default_port`.
    pub fn with_default_port<S: AsRef<str>>(hosts: &[S], default_port: u16) -> Self {
        let patterns = hosts
            .iter()
            .map(|host| {
                let host = host.as_ref().to_ascii_lowercase();
                let (name, port) = match host.rsplit_once(':') {
                    Some((name, port)) => (name.to_owned(), port.parse().unwrap_or(0)),
                    None => (host, default_port),
                };
                match name.strip_prefix("*.") {
                    Some(suffix) => Pattern::Subdomains {
                        suffix: format!(".{suffix}"),
                        port,
                    },
                    None => Pattern::Exact { host: name, port },
                }
            })
            .collect();
        Self { patterns }
    }

    /// Whether a request to `host` on `port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.patterns.iter().any(|pattern| match pattern {
            Pattern::Exact {
                host: declared,
                port: declared_port,
            } => *declared == host && *declared_port == port,
            Pattern::Subdomains {
                suffix,
                port: declared_port,
            } => {
                host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && *declared_port == port
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_hosts_match_only_themselves_on_their_port() {
        let policy = HostPolicy::new(&["api.example.com", "data.example.org:8443"]);
        assert!(policy.allows("api.example.com", 443));
        assert!(policy.allows("API.Example.com.", 443));
        assert!(!policy.allows("api.example.com", 8443));
        assert!(!policy.allows("evil-api.example.com", 443));
        assert!(!policy.allows("api.example.com.evil.net", 443));
        assert!(policy.allows("data.example.org", 8443));
        assert!(!policy.allows("data.example.org", 443));
    }

    #[test]
    fn suffix_patterns_match_subdomains_only() {
        let policy = HostPolicy::new(&["*.example.com"]);
        assert!(policy.allows("acme.example.com", 443));
        assert!(policy.allows("a.b.example.com", 443));
        assert!(!policy.allows("example.com", 443));
        assert!(!policy.allows("evilexample.com", 443));
    }

    #[test]
    fn no_hosts_allow_nothing() {
        assert!(!HostPolicy::default().allows("example.com", 443));
    }
}
