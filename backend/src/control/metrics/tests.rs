use super::*;

#[test]
fn only_get_metrics_is_a_metrics_request() {
    assert!(is_metrics_request("GET", "/metrics"));
    assert!(is_metrics_request("GET", "/metrics?x=1"));
    assert!(!is_metrics_request("POST", "/metrics"));
    assert!(!is_metrics_request("GET", "/metricsx"));
    assert!(!is_metrics_request("GET", "/v1/metrics"));
}
