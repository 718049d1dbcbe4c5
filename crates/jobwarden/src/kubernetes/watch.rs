//! The reflectors the controller reads through: one cluster-wide watch, or, with
//! `[kubernetes] namespaces` listed, one watch per namespace (so a Role in each is all RBAC
//! must grant), seen as one cache and one stream of events, each tagged with the namespace
//! whose watch produced it.

use std::sync::Arc;

use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

/// One watch's event, with the namespace it watches (None: cluster-wide).
pub type Tagged<K> = (Option<String>, Result<watcher::Event<K>, watcher::Error>);

/// The objects of every watch.
#[derive(Clone)]
pub struct Cache<K: Resource<DynamicType = ()> + Clone + 'static> {
    stores: Vec<reflector::Store<K>>,
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// Every object.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.stores.iter().flat_map(|s| s.state()).collect()
    }

    /// The objects of one namespace (None: every object).
    pub fn state_in(&self, namespace: Option<&str>) -> Vec<Arc<K>> {
        let all = self.state();
        match namespace {
            None => all,
            Some(ns) => all
                .into_iter()
                .filter(|o| o.meta().namespace.as_deref() == Some(ns))
                .collect(),
        }
    }

    /// One object.
    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        self.stores.iter().find_map(|s| s.get(key))
    }

    /// Completes once every watch has listed; an error if a watch's writer was dropped.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        for s in &self.stores {
            s.wait_until_ready().await?;
        }
        Ok(())
    }
}

/// Watches `K` with `config` cluster-wide (`namespaces` None) or in each of `namespaces`,
/// re-listing after a broken watch with kube's default backoff.
pub fn watch<K>(
    client: &Client,
    namespaces: Option<Vec<String>>,
    config: &watcher::Config,
) -> (Cache<K>, impl Stream<Item = Tagged<K>> + Send + 'static)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let apis: Vec<(Option<String>, Api<K>)> = match namespaces {
        None => vec![(None, Api::all(client.clone()))],
        Some(list) => list
            .into_iter()
            .map(|ns| {
                let api = Api::namespaced(client.clone(), &ns);
                (Some(ns), api)
            })
            .collect(),
    };
    let mut stores = Vec::with_capacity(apis.len());
    let mut streams: SelectAll<BoxStream<'static, Tagged<K>>> = SelectAll::new();
    for (ns, api) in apis {
        let (store, writer) = reflector::store::<K>();
        stores.push(store);
        streams.push(
            reflector::reflector(writer, watcher(api, config.clone()))
                .default_backoff()
                .map(move |ev| (ns.clone(), ev))
                .boxed(),
        );
    }
    (Cache { stores }, streams)
}
