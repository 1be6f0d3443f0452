//! HTTP outputs: batched POSTs of NDJSON, Splunk HEC envelopes or an
//! Elasticsearch `_bulk` body.

use std::time::Duration;

use serde_json::json;

use super::{
    Record, SendError,
    config::{Format, HttpBody, HttpSettings},
};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Of an error response, enough to say why.
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// One event's part of the POST body, with its newline.
pub fn frame(record: &Record, settings: &HttpSettings, format: Format) -> Vec<u8> {
    let mut out = match settings.body {
        HttpBody::Ndjson => record.json.as_bytes().to_vec(),
        HttpBody::SplunkHec => {
            let event: serde_json::Value =
                serde_json::from_str(&record.json).unwrap_or(serde_json::Value::Null);
            let mut envelope = json!({
                "time": record.time.timestamp_micros() as f64 / 1e6,
                "host": record.host,
                "source": "secretmon",
                "sourcetype": match format {
                    Format::Native => "secretmon:native",
                    Format::Ocsf => "secretmon:ocsf",
                },
                "event": event,
            });
            if let Some(index) = &settings.index {
                envelope["index"] = json!(index);
            }
            serde_json::to_vec(&envelope).expect("JSON values serialize")
        }
        HttpBody::ElasticBulk => {
            let index = settings.index.as_deref().unwrap_or("secretmon");
            // `create` with the event id: a second copy is refused (409).
            let mut action =
                serde_json::to_vec(&json!({"create": {"_index": index, "_id": record.id}}))
                    .expect("JSON values serialize");
            action.push(b'\n');
            action.extend_from_slice(record.json.as_bytes());
            action
        }
    };
    out.push(b'\n');
    out
}

pub struct HttpSender {
    agent: ureq::Agent,
    url: String,
    body: HttpBody,
    authorization: Option<String>,
}

impl HttpSender {
    pub fn new(
        url: &url::Url,
        settings: &HttpSettings,
        tls: ureq::tls::TlsConfig,
    ) -> Result<Self, super::OutputError> {
        let token = settings
            .token
            .as_ref()
            .map(|t| t.value())
            .transpose()
            .map_err(super::OutputError::Config)?;
        let authorization = token.map(|t| match settings.body {
            HttpBody::SplunkHec => format!("Splunk {t}"),
            HttpBody::ElasticBulk => format!("ApiKey {t}"),
            HttpBody::Ndjson => format!("Bearer {t}"),
        });
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .tls_config(tls)
            .build()
            .new_agent();
        Ok(Self {
            agent,
            url: url.to_string(),
            body: settings.body,
            authorization,
        })
    }

    /// POST the frames as one body. A 4xx other than 408 and 429 means the
    /// receiver will never take it: the batch is rejected, not retried.
    pub fn send(&mut self, frames: &[Vec<u8>]) -> Result<(), SendError> {
        let body: Vec<u8> = frames.concat();
        let mut request = self.agent.post(&self.url).content_type(match self.body {
            HttpBody::SplunkHec => "application/json",
            HttpBody::Ndjson | HttpBody::ElasticBulk => "application/x-ndjson",
        });
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        let mut response = request
            .send(&body[..])
            .map_err(|e| SendError::Retry(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ERROR_BODY)
            .read_to_string()
            .unwrap_or_default();
        match status {
            200..=299 if self.body == HttpBody::ElasticBulk => bulk_result(&text),
            200..=299 => Ok(()),
            408 | 429 => Err(SendError::Retry(format!("HTTP {status}"))),
            400..=499 => Err(SendError::Reject(format!(
                "HTTP {status}: {}",
                crate::errors::one_line(&text)
            ))),
            _ => Err(SendError::Retry(format!("HTTP {status}"))),
        }
    }
}

/// `_bulk` answers 200 with per-item results: a 409 is a duplicate already
/// stored, 429 and 5xx are worth another try, other refusals are not.
fn bulk_result(text: &str) -> Result<(), SendError> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return Err(SendError::Retry(
            "`_bulk` answered something not JSON".into(),
        ));
    };
    if v["errors"] != json!(true) {
        return Ok(());
    }
    let items = v["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    let statuses = items
        .iter()
        .filter_map(|i| i.as_object()?.values().next()?["status"].as_u64());
    let mut refused = 0;
    for status in statuses {
        match status {
            200..=299 | 409 => {}
            429 | 500..=599 => {
                return Err(SendError::Retry(format!("`_bulk` item status {status}")));
            }
            _ => refused += 1,
        }
    }
    if refused > 0 {
        return Err(SendError::Reject(format!(
            "`_bulk` refused {refused} of {} events",
            items.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::event::Severity;

    fn record() -> Record {
        Record {
            id: "0190aaaa".into(),
            kind: "finding",
            severity: Severity::High,
            time: DateTime::from_timestamp(1_700_000_000, 250_000_000).unwrap(),
            host: "web-1".into(),
            json: "{\"kind\":\"finding\"}".into(),
        }
    }

    fn settings(body: HttpBody) -> HttpSettings {
        HttpSettings {
            body,
            token: None,
            index: Some("sec".into()),
            batch_events: 10,
        }
    }

    #[test]
    fn frames() {
        let r = record();
        assert_eq!(
            frame(&r, &settings(HttpBody::Ndjson), Format::Native),
            b"{\"kind\":\"finding\"}\n"
        );
        let hec = frame(&r, &settings(HttpBody::SplunkHec), Format::Ocsf);
        let v: serde_json::Value = serde_json::from_slice(&hec).unwrap();
        assert_eq!(v["time"], 1_700_000_000.25);
        assert_eq!(v["host"], "web-1");
        assert_eq!(v["sourcetype"], "secretmon:ocsf");
        assert_eq!(v["index"], "sec");
        assert_eq!(v["event"]["kind"], "finding");
        let bulk =
            String::from_utf8(frame(&r, &settings(HttpBody::ElasticBulk), Format::Native)).unwrap();
        assert_eq!(
            bulk,
            "{\"create\":{\"_index\":\"sec\",\"_id\":\"0190aaaa\"}}\n{\"kind\":\"finding\"}\n"
        );
    }

    #[test]
    fn bulk_answers() {
        assert!(bulk_result("{\"errors\":false,\"items\":[]}").is_ok());
        let dup = "{\"errors\":true,\"items\":[{\"create\":{\"status\":201}},{\"create\":{\"status\":409}}]}";
        assert!(bulk_result(dup).is_ok(), "a duplicate is delivered");
        let busy = "{\"errors\":true,\"items\":[{\"create\":{\"status\":429}}]}";
        assert!(matches!(bulk_result(busy), Err(SendError::Retry(_))));
        let bad = "{\"errors\":true,\"items\":[{\"create\":{\"status\":400}}]}";
        assert!(matches!(bulk_result(bad), Err(SendError::Reject(_))));
        assert!(matches!(bulk_result("<html>"), Err(SendError::Retry(_))));
    }
}
