//! Following GoTo's page markers to the end of a listing.
//!
//! GoTo pages lists with `pageSize` / `pageMarker` on the request and `nextPageMarker` on the
//! response, absent (or, in the Call Events guide, `""`) on the last page. Every paged
//! endpoint goes through [`fetch_all`] so that the stopping rule, and the guard against a
//! server that hands out the same marker forever, exist once.

use std::collections::HashSet;

use url::Url;

use super::endpoint::Endpoint;
use super::error::GotoError;
use super::model::Page;
use super::transport::{ApiRequest, Transport};

/// Upper bound on the pages of one listing; beyond it the server is assumed to be looping.
const MAX_PAGES: usize = 10_000;

/// Fetches `first_url` and every following page, concatenating the items.
///
/// With `none_on_404`, a 404 on the first page yields `Ok(None)` (the thing listed does not
/// exist); otherwise, and on later pages, a 404 is an error.
///
/// `decode` returns serde's error as is, so that it becomes a [`GotoError::Decode`] through
/// [`GotoError::decode`] like every other decode error: serde quotes offending values, and
/// only that function knows which endpoints' values may be credentials (a channel listing
/// carries webhook and WebSocket URLs).
pub(crate) async fn fetch_all<T>(
    transport: &Transport,
    endpoint: Endpoint,
    first_url: Url,
    none_on_404: bool,
    decode: impl Fn(&[u8]) -> serde_json::Result<Page<T>>,
) -> Result<Option<Vec<T>>, GotoError> {
    let mut items = Vec::new();
    let mut seen_markers = HashSet::new();
    let mut marker: Option<String> = None;
    for page_number in 0..MAX_PAGES {
        let mut url = first_url.clone();
        if let Some(m) = &marker {
            url.query_pairs_mut().append_pair("pageMarker", m);
        }
        let accept: &'static [u16] = if none_on_404 && page_number == 0 {
            &[404]
        } else {
            &[]
        };
        let response = transport
            .send(&ApiRequest::new(endpoint, url).also_accept(accept))
            .await?;
        if response.status == 404 {
            return Ok(None);
        }
        let page = decode(&response.body).map_err(|e| GotoError::decode(endpoint, &e))?;
        items.extend(page.items);
        match page.next_page_marker {
            None => return Ok(Some(items)),
            Some(next) => {
                if !seen_markers.insert(next.clone()) {
                    return Err(GotoError::Decode {
                        endpoint,
                        detail: "nextPageMarker repeats an earlier marker".to_owned(),
                    });
                }
                marker = Some(next);
            }
        }
    }
    Err(GotoError::Decode {
        endpoint,
        detail: format!("more than {MAX_PAGES} pages"),
    })
}
