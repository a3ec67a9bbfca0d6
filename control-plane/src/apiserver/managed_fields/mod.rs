//! Managed fields and server-side apply, as kube-apiserver's field manager keeps them.
//!
//! Every write records who set which fields in `metadata.managedFields`: one entry per
//! manager (the `fieldManager` query parameter, or the User-Agent's first word),
//! operation (`Apply` or `Update`), API version (for updates) and subresource, each
//! with its `FieldsV1` set ([`fieldpath`]). An update takes the fields it adds or
//! changes from every other manager; removed fields leave every set.
//!
//! Server-side apply (`application/apply-patch+yaml`) merges the applied configuration
//! into the live object by the schema's list and map types ([`schema`], [`typed`]),
//! removes the fields the manager applied last time and no longer does (unless someone
//! else owns them), and refuses with 409 — upstream's "Apply failed with N conflicts"
//! message — when it would change a field another manager owns, unless `force=true`,
//! which takes the fields over.

pub mod fieldpath;
pub mod schema;
pub mod typed;
pub mod versions;

use serde_json::{Map, Value, json};

use self::fieldpath::{Display, Path, PathElement, Set};
use self::schema::Node;
use self::versions::{Converter, Naming, Versions};
use super::object;
use super::registry::ResourceDef;
use super::rest::Ctx;
use super::status::{ApiError, ApiResult, Cause};

pub const APPLY: &str = "Apply";
pub const UPDATE: &str = "Update";
/// The manager an object's fields belong to when it is first applied to and has no
/// managed fields (it was written before they were kept).
pub const BEFORE_FIRST_APPLY: &str = "before-first-apply";
/// kube-apiserver's limit on `fieldManager`.
const MAX_MANAGER_LEN: usize = 128;
/// How many `Update` entries an object keeps; older ones are merged into
/// [`ANCIENT_CHANGES`] (kube-apiserver's `DefaultMaxUpdateManagers`).
const MAX_UPDATE_MANAGERS: usize = 10;
/// The manager the oldest updaters' fields are merged into past the cap.
pub const ANCIENT_CHANGES: &str = "ancient-changes";

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub fields: Set,
}

impl Entry {
    /// The same manager: appliers are one manager whatever version they apply in.
    fn same(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == APPLY || self.api_version == other.api_version)
    }

    fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("manager".into(), json!(self.manager));
        out.insert("operation".into(), json!(self.operation));
        out.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            out.insert("time".into(), json!(t));
        }
        out.insert("fieldsType".into(), json!("FieldsV1"));
        out.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            out.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(out)
    }

    /// How conflict messages name the manager (upstream's `printManager`): `"kubectl"`
    /// for an applier, `"kube-controller-manager" using apps/v1` for an updater, with
    /// ` with subresource "status"` after the name for a subresource's manager.
    fn describe(&self) -> String {
        let mut out = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            out.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == UPDATE {
            out.push_str(&format!(" using {}", self.api_version));
        }
        out
    }
}

/// What an object's `metadata.managedFields` says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decoded {
    /// No entries (absent or null).
    None,
    /// `[]` or `[{}]`: the client asks to clear them (upstream's `isResetManagedFields`).
    Reset,
    Entries(Vec<Entry>),
}

fn decode(list: Option<&Value>) -> Result<Decoded, String> {
    let Some(list) = list.filter(|v| !v.is_null()) else {
        return Ok(Decoded::None);
    };
    let items = list
        .as_array()
        .ok_or_else(|| "managedFields must be a list".to_owned())?;
    if items.is_empty() || (items.len() == 1 && items[0].as_object().is_some_and(Map::is_empty)) {
        return Ok(Decoded::Reset);
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let text = |name: &str| item.get(name).and_then(Value::as_str).unwrap_or_default();
        let operation = text("operation");
        if operation != APPLY && operation != UPDATE {
            return Err(format!(
                "managedFields[{i}].operation: unsupported value {operation:?}: must be Apply or Update"
            ));
        }
        let fields = match item.get("fieldsV1") {
            None | Some(Value::Null) => Set::new(),
            Some(v) => {
                if !matches!(text("fieldsType"), "FieldsV1") {
                    return Err(format!(
                        "managedFields[{i}].fieldsType: unsupported value {:?}: must be FieldsV1",
                        text("fieldsType")
                    ));
                }
                Set::from_fields_v1(v).map_err(|e| format!("managedFields[{i}].fieldsV1: {e}"))?
            }
        };
        out.push(Entry {
            manager: text("manager").to_owned(),
            operation: operation.to_owned(),
            api_version: text("apiVersion").to_owned(),
            time: item.get("time").and_then(Value::as_str).map(str::to_owned),
            subresource: text("subresource").to_owned(),
            fields,
        });
    }
    Ok(Decoded::Entries(out))
}

/// The list to store (sorted as upstream: appliers first, then by time and name), or
/// `None` when no manager owns anything.
fn encode(mut entries: Vec<Entry>) -> Option<Value> {
    entries.retain(|e| !e.fields.is_empty());
    cap_update_managers(&mut entries);
    if entries.is_empty() {
        return None;
    }
    entries.sort_by(|a, b| {
        (
            &a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    Some(Value::Array(entries.iter().map(Entry::to_json).collect()))
}

/// Keeps at most [`MAX_UPDATE_MANAGERS`] `Update` entries, as kube-apiserver does: the
/// oldest (by time, then name) are merged into one `ancient-changes` entry per API
/// version, stamped with the newest time merged, until the count is under the cap.
fn cap_update_managers(entries: &mut Vec<Entry>) {
    let updaters = entries.iter().filter(|e| e.operation == UPDATE).count();
    if updaters <= MAX_UPDATE_MANAGERS {
        return;
    }
    let (mut updates, applies): (Vec<Entry>, Vec<Entry>) =
        entries.drain(..).partition(|e| e.operation == UPDATE);
    updates.sort_by(|a, b| {
        (&a.time, &a.manager, &a.api_version, &a.subresource).cmp(&(
            &b.time,
            &b.manager,
            &b.api_version,
            &b.subresource,
        ))
    });
    let mut length = updates.len();
    let mut kept: Vec<Entry> = Vec::with_capacity(updates.len());
    let mut buckets: Vec<Entry> = Vec::new();
    let mut rest = updates.into_iter();
    for entry in rest.by_ref() {
        match buckets
            .iter_mut()
            .find(|b| b.api_version == entry.api_version)
        {
            Some(bucket) => {
                bucket.fields = bucket.fields.union(&entry.fields);
                if entry.time > bucket.time {
                    bucket.time = entry.time;
                }
                length -= 1;
            }
            None => buckets.push(Entry {
                manager: ANCIENT_CHANGES.into(),
                operation: UPDATE.into(),
                subresource: String::new(),
                ..entry
            }),
        }
        if length <= MAX_UPDATE_MANAGERS {
            break;
        }
    }
    kept.extend(rest);
    // An existing bucket among the kept entries absorbs the new one of its version.
    for bucket in buckets {
        match kept.iter_mut().find(|e| {
            e.manager == ANCIENT_CHANGES
                && e.subresource.is_empty()
                && e.api_version == bucket.api_version
        }) {
            Some(old) => {
                old.fields = old.fields.union(&bucket.fields);
                if bucket.time > old.time {
                    old.time = bucket.time;
                }
            }
            None => kept.push(bucket),
        }
    }
    entries.extend(applies);
    entries.extend(kept);
}

pub fn set_managed(obj: &mut Value, managed: Option<Value>) {
    if let Some(meta) = object::meta_mut(obj) {
        match managed {
            Some(list) => {
                meta.insert("managedFields".into(), list);
            }
            None => {
                meta.remove("managedFields");
            }
        }
    }
}

/// The schema of the resource's objects.
pub fn root(def: &ResourceDef) -> Node<'_> {
    match (&def.typed, &def.crd) {
        (Some(t), _) => Node::builtin(&t.definition),
        (None, Some(crd)) => Node::custom(&crd.schema),
        _ => Node::deduced(),
    }
}

/// Fields no manager owns: identity and server-set metadata, and the status of a
/// resource with a status subresource when written through the main resource.
fn ignored(def: &ResourceDef, subresource: &str) -> Set {
    let mut out = Set::new();
    let f = |s: &str| PathElement::Field(s.to_owned());
    out.insert(&[f("apiVersion")]);
    out.insert(&[f("kind")]);
    for field in IGNORED_METADATA {
        out.insert(&[f("metadata"), f(field)]);
    }
    if def.status && subresource.is_empty() {
        out.insert(&[f("status")]);
    }
    out
}

/// Identity and server-set metadata: owned by nobody.
const IGNORED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "selfLink",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

fn api_version(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        def.version.clone()
    } else {
        format!("{}/{}", def.group, def.version)
    }
}

/// The options kind a request's parameters are validated as.
fn options_kind(ctx: &Ctx) -> &'static str {
    if super::request::content_type(&ctx.headers).contains("patch") {
        "PatchOptions"
    } else {
        "UpdateOptions"
    }
}

fn options_error(kind: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid("meta.k8s.io", kind, "", causes)
}

/// Checks `fieldManager` as kube-apiserver's `ValidateFieldManager`.
fn validate_manager(kind: &str, manager: &str) -> ApiResult<()> {
    let causes = manager_causes(manager);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(options_error(kind, causes))
    }
}

/// What is wrong with `fieldManager` (upstream's `ValidateFieldManager`): longer than
/// 128 bytes, or a character Go's `unicode.IsPrint` refuses, at its byte position.
pub fn manager_causes(manager: &str) -> Vec<Cause> {
    manager_causes_at("fieldManager", manager)
}

/// [`manager_causes`] of a manager name at `field`.
fn manager_causes_at(field: &str, manager: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if manager.len() > MAX_MANAGER_LEN {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: may not be more than {MAX_MANAGER_LEN} bytes"),
        });
    }
    for (i, c) in manager.char_indices() {
        if !is_print(c) {
            causes.push(Cause::invalid(
                field,
                format!(
                    "Invalid value: {manager:?}: invalid character U+{:04X} (at position {i})",
                    c as u32
                ),
            ));
        }
    }
    causes
}

/// What upstream's `ValidateManagedFields` finds wrong in entries a client sent (their
/// operation and fieldsType are checked as they are decoded): a manager as
/// `fieldManager` is checked, a subresource over 256 bytes.
fn entry_causes(list: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (i, e) in list
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("metadata.managedFields[{i}]");
        let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default();
        causes.extend(manager_causes_at(&format!("{at}.manager"), text("manager")));
        if text("subresource").len() > 256 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: format!("{at}.subresource"),
                message: "Too long: may not be more than 256 bytes".into(),
            });
        }
    }
    causes
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII
/// space; not controls, format characters, other spaces and separators, surrogates or
/// private use. (Unassigned code points are not told apart.)
fn is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let format = matches!(c as u32,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF
        | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F);
    let private = matches!(c as u32, 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD);
    !format && !private
}

/// The manager of a non-apply write: `fieldManager`, or the User-Agent's product name
/// (`kubectl`, `kube-controller-manager`…).
pub fn manager(ctx: &Ctx, kind: &str) -> ApiResult<String> {
    if let Some(name) = ctx.query.get("fieldManager").filter(|m| !m.is_empty()) {
        validate_manager(kind, name)?;
        return Ok(name.to_owned());
    }
    let agent = ctx
        .headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let prefix = agent.split('/').next().unwrap_or_default();
    if prefix.is_empty() {
        return Ok(if ctx.user.is_none() {
            "kube-apiserver".into()
        } else {
            "unknown".into()
        });
    }
    Ok(prefix.chars().take(MAX_MANAGER_LEN).collect())
}

/// The managed fields of a create as kube-apiserver records them: of `obj`, the object
/// as the client sent it with the API's defaults, before mutating admission — so what
/// admission adds (a ServiceAccount's token volume, a priority, a webhook's label) is
/// owned by no one. Set them on the admitted object with [`set_managed`].
///
/// The creating manager owns every field it set, unless the client sent managed
/// fields of its own (kept, as upstream) or this is an apply (whose entries [`apply`]
/// made: `client`, as it is).
pub fn of_create(ctx: &Ctx, obj: &Value, client: Option<Value>) -> ApiResult<Option<Value>> {
    if ctx.is_apply() {
        return Ok(client);
    }
    let name = manager(ctx, "CreateOptions")?;
    let node = root(&ctx.def);
    // The fields as the version the client speaks names them.
    let served =
        (ctx.def.converts() && ctx.def.renames_fields()).then(|| ctx.def.external(obj.clone()));
    let view = served.as_ref().unwrap_or(obj);
    if let Ok(Decoded::Entries(mut entries)) = decode(client.as_ref()) {
        let causes = entry_causes(client.as_ref());
        if !causes.is_empty() {
            return Err(crate::apiserver::rest::invalid(&ctx.def, obj, causes));
        }
        let changes = typed::compare(&json!({}), view, node).without(&ignored(&ctx.def, ""));
        let mut versions = Versions::new(&ctx.def, &ctx.api.registry, "", changes, || {
            (None, obj.clone())
        });
        record_update(&mut entries, &ctx.def, name, "", &mut versions);
        return Ok(encode(entries));
    }
    let mut fields = typed::created_fields(view, node);
    strip_ignored(&mut fields, &ctx.def, "");
    Ok((!fields.is_empty()).then(|| {
        let mut entry = new_entry(&name, &api_version(&ctx.def), "");
        entry["fieldsV1"] = Value::Object(fields);
        json!([entry])
    }))
}

/// A new `Update` entry, owning nothing yet, stamped now.
fn new_entry(manager: &str, api_version: &str, subresource: &str) -> Value {
    let mut entry = json!({
        "manager": manager,
        "operation": UPDATE,
        "apiVersion": api_version,
        "time": object::now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    });
    if !subresource.is_empty() {
        entry["subresource"] = json!(subresource);
    }
    entry
}

/// Takes the fields no manager owns out of a `fieldsV1` tree.
fn strip_ignored(fields: &mut Map<String, Value>, def: &ResourceDef, subresource: &str) {
    fields.remove("f:apiVersion");
    fields.remove("f:kind");
    if def.status && subresource.is_empty() {
        fields.remove("f:status");
    }
    if let Some(Value::Object(meta)) = fields.get_mut("f:metadata") {
        for field in IGNORED_METADATA {
            meta.remove(&format!("f:{field}"));
        }
        if meta.is_empty() {
            fields.remove("f:metadata");
        }
    }
}

/// Records an update of `old` into `new` (through `subresource`, empty for the main
/// resource). `client` is the `managedFields` the client's object carried: used
/// instead of the live ones when it differs and names managers (or is `[{}]`, which
/// clears them), as upstream lets clients edit them. The entries are edited as
/// `fieldsV1` JSON at the few paths the update changed, not decoded.
pub fn on_update(
    ctx: &Ctx,
    old: &Value,
    new: &mut Value,
    client: Option<Value>,
    subresource: &str,
) -> ApiResult<()> {
    if ctx.is_apply() {
        set_managed(new, client);
        return Ok(());
    }
    let live = old.pointer("/metadata/managedFields");
    let from_client = subresource.is_empty() && client.is_some() && client.as_ref() != live;
    let node = root(&ctx.def);
    // Compared in the version the client speaks, whose fields its entry names; the
    // other versions' comparisons start from these views too, as upstream converts
    // the request's objects (a round trip through another version need not give back
    // the stored object byte for byte: list order, annotations).
    let views = (ctx.def.converts() && ctx.def.renames_fields())
        .then(|| (ctx.def.external(old.clone()), ctx.def.external(new.clone())));
    let changes = match &views {
        Some((old, new)) => typed::compare(old, new, node),
        None => typed::compare(old, new, node),
    }
    .without(&ignored(&ctx.def, subresource));
    if !from_client && changes.is_empty() {
        set_managed(new, live.cloned());
        return Ok(());
    }
    let changed = changes.added.union(&changes.modified).paths();
    let removed = changes.removed.paths();
    let taken: Vec<Path> = changed.iter().chain(&removed).cloned().collect();
    let changes_empty = changes.is_empty();
    let mut versions =
        Versions::new(
            &ctx.def,
            &ctx.api.registry,
            subresource,
            changes,
            || match views {
                Some((old, new)) => (Some(ctx.def.internal(old)), ctx.def.internal(new)),
                None => (Some(old.clone()), new.clone()),
            },
        );
    let live_list = || live.and_then(Value::as_array).cloned().unwrap_or_default();
    let mut list: Vec<Value> = if from_client {
        match decode(client.as_ref()) {
            Ok(Decoded::Entries(_)) => {
                let causes = entry_causes(client.as_ref());
                if !causes.is_empty() {
                    return Err(crate::apiserver::rest::invalid(&ctx.def, new, causes));
                }
                client
                    .as_ref()
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            }
            Ok(Decoded::Reset) => Vec::new(),
            _ => live_list(),
        }
    } else {
        live_list()
    };
    let name = manager(ctx, options_kind(ctx))?;
    // An object without managed fields (cleared, or from before they were kept) is not
    // tracked by updates until an apply, as upstream's skip-non-applied manager
    // (which tracks every create) leaves it.
    if list.is_empty() {
        set_managed(new, None);
        return Ok(());
    }
    let version = api_version(&ctx.def);
    let text = |e: &Value, k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let is_me = |e: &Value| {
        text(e, "manager") == name
            && text(e, "operation") == UPDATE
            && text(e, "apiVersion") == version
            && text(e, "subresource") == subresource
    };
    // Entries of versions no longer served go, as upstream drops their managers.
    list.retain(|e| versions.served(&text(e, "apiVersion")));
    let mut mine = None;
    for (i, entry) in list.iter_mut().enumerate() {
        if is_me(entry) {
            mine = Some(i);
            continue;
        }
        // Another version's entry loses what changed as that version names it.
        let entry_version = text(entry, "apiVersion");
        let other: Vec<Path>;
        let taken = if versions.is_own(&entry_version) {
            &taken
        } else {
            let c = versions.changes(&entry_version);
            other = c.added.union(&c.modified).union(&c.removed).paths();
            &other
        };
        if let Some(Value::Object(tree)) = entry.get_mut("fieldsV1") {
            for path in taken {
                fieldpath::fields_remove(tree, path);
            }
        }
    }
    let index = match mine {
        Some(i) => i,
        None => {
            list.push(new_entry(&name, &version, subresource));
            list.len() - 1
        }
    };
    if let Some(Value::Object(tree)) = list[index].get_mut("fieldsV1") {
        for path in &removed {
            fieldpath::fields_remove(tree, path);
        }
        for path in &changed {
            fieldpath::fields_insert(tree, path);
        }
    }
    if !changes_empty {
        list[index]["time"] = json!(object::now());
    }
    list.retain(|e| {
        e.get("fieldsV1")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
    });
    let updaters = list
        .iter()
        .filter(|e| text(e, "operation") == UPDATE)
        .count();
    if updaters > MAX_UPDATE_MANAGERS
        && let Ok(Decoded::Entries(entries)) = decode(Some(&Value::Array(list.clone())))
    {
        set_managed(new, encode(entries));
        return Ok(());
    }
    list.sort_by_key(|e| {
        (
            text(e, "operation"),
            text(e, "time"),
            text(e, "manager"),
            text(e, "apiVersion"),
            text(e, "subresource"),
        )
    });
    set_managed(new, (!list.is_empty()).then_some(Value::Array(list)));
    Ok(())
}

/// An updater takes what it added or changed from everyone; what it removed leaves
/// every set (each entry's as its own API version names the fields).
fn record_update(
    entries: &mut Vec<Entry>,
    def: &ResourceDef,
    manager: String,
    subresource: &str,
    versions: &mut Versions,
) {
    let me = Entry {
        manager,
        operation: UPDATE.into(),
        api_version: api_version(def),
        time: None,
        subresource: subresource.to_owned(),
        fields: Set::new(),
    };
    let changed = versions.own().added.union(&versions.own().modified);
    let removed = versions.own().removed.clone();
    entries.retain(|e| versions.served(&e.api_version));
    for e in entries.iter_mut().filter(|e| !e.same(&me)) {
        e.fields = if versions.is_own(&e.api_version) {
            e.fields.difference(&changed).difference(&removed)
        } else {
            let c = versions.changes(&e.api_version);
            e.fields
                .difference(&c.added)
                .difference(&c.modified)
                .difference(&c.removed)
        };
    }
    let index = match entries.iter().position(|e| e.same(&me)) {
        Some(i) => i,
        None => {
            entries.push(me);
            entries.len() - 1
        }
    };
    let mine = &mut entries[index];
    mine.fields = mine.fields.difference(&removed).union(&changed);
    if !changed.is_empty() || !removed.is_empty() {
        mine.time = Some(object::now());
    }
}

/// Validates an apply request's options: `fieldManager` is required; `force` only
/// with apply.
pub fn check_patch_options(ctx: &Ctx, apply: bool) -> ApiResult<()> {
    let manager = ctx.query.get("fieldManager").unwrap_or_default();
    if apply {
        if manager.is_empty() {
            return Err(options_error(
                "PatchOptions",
                vec![Cause {
                    reason: "FieldValueRequired",
                    field: "fieldManager".into(),
                    message: "Required value: is required for apply patch".into(),
                }],
            ));
        }
        validate_manager("PatchOptions", manager)?;
    } else if ctx.query.get("force").is_some() {
        return Err(options_error(
            "PatchOptions",
            vec![Cause::forbidden(
                "force",
                "Forbidden: may not be specified for non-apply patch",
            )],
        ));
    }
    Ok(())
}

/// Applies `config` (an object of the resource's kind, already decoded) over `live`
/// (`None` when the apply creates the object) for the request's manager, through
/// `subresource`. Returns the object to store, its `managedFields` set.
pub fn apply(
    ctx: &Ctx,
    live: Option<&Value>,
    config: &Value,
    subresource: &str,
) -> ApiResult<Value> {
    let def = &ctx.def;
    let force = ctx.query.flag("force");
    let manager = ctx.query.get("fieldManager").unwrap_or_default().to_owned();
    let node = root(def);
    let ignored = ignored(def, subresource);
    let mut config = config.clone();
    if let Some(meta) = object::meta_mut(&mut config) {
        meta.remove("managedFields");
    }
    if subresource == "status" {
        config = status_only(&config);
    }
    let mut live_obj = live.cloned().unwrap_or_else(|| json!({}));
    let live_managed = live_obj.pointer("/metadata/managedFields").cloned();
    if let Some(meta) = object::meta_mut(&mut live_obj) {
        meta.remove("managedFields");
        // A resourceVersion in the configuration is a precondition; none, none.
        meta.remove("resourceVersion");
    }
    let mut entries = match decode(live_managed.as_ref()) {
        Ok(Decoded::Entries(e)) => e,
        _ if live.is_some() => {
            let fields = typed::strip(&typed::field_set(&live_obj, node), &ignored);
            vec![Entry {
                manager: BEFORE_FIRST_APPLY.into(),
                operation: UPDATE.into(),
                api_version: api_version(def),
                time: None,
                subresource: String::new(),
                fields,
            }]
        }
        _ => Vec::new(),
    };
    let applied = typed::strip(&typed::field_set(&config, node), &ignored);
    let me = Entry {
        manager,
        operation: APPLY.into(),
        api_version: config
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| api_version(def)),
        time: None,
        subresource: subresource.to_owned(),
        fields: applied.clone(),
    };
    let (last, last_version, last_time) = match entries.iter().position(|e| e.same(&me)) {
        Some(i) => {
            let e = entries.remove(i);
            (e.fields, e.api_version, e.time)
        }
        None => (Set::new(), String::new(), None),
    };
    let converter = Converter::new(def, &ctx.api.registry);
    // Entries of versions no longer served go, as upstream drops their managers.
    entries.retain(|e| converter.served(&e.api_version));
    let merged = typed::merge(&live_obj, &config, node);
    let mut pruned = prune(
        converter,
        merged,
        (&last, &last_version),
        &applied,
        &entries,
    );
    let changes = typed::compare(&live_obj, &pruned, node).without(&ignored);
    let changed = changes.added.union(&changes.modified);
    let removed = changes.removed.clone();
    let mut versions = Versions::new(def, &ctx.api.registry, subresource, changes, || {
        (
            live.map(|_| def.internal(live_obj.clone())),
            def.internal(pruned.clone()),
        )
    });
    // Each entry's fields against what changed as its own version names them.
    let mut taken = Vec::with_capacity(entries.len());
    for e in &entries {
        taken.push(if versions.is_own(&e.api_version) {
            None
        } else {
            let c = versions.changes(&e.api_version);
            Some((c.added.union(&c.modified), c.removed.clone()))
        });
    }
    let conflicts: Vec<(String, Vec<Path>)> = entries
        .iter()
        .zip(&taken)
        .filter_map(|(e, other)| {
            let both = e
                .fields
                .intersection(other.as_ref().map_or(&changed, |o| &o.0));
            (!both.is_empty()).then(|| (e.describe(), both.paths()))
        })
        .collect();
    if !conflicts.is_empty() && !force {
        // `kubectl apply --server-side` over a client-side-applied object: fields
        // still as the last-applied annotation has them are no conflict (upstream's
        // upgrade path from client-side apply).
        let allowed = match (me.manager == KUBECTL, live) {
            (true, Some(live)) => last_applied_fields(live, node, &ignored),
            _ => None,
        };
        let remaining: Vec<(String, Vec<Path>)> = conflicts
            .into_iter()
            .filter_map(|(who, paths)| {
                let left: Vec<Path> = paths
                    .into_iter()
                    .filter(|p| !allowed.as_ref().is_some_and(|a| a.has(p)))
                    .collect();
                (!left.is_empty()).then_some((who, left))
            })
            .collect();
        if !remaining.is_empty() {
            return Err(conflict_error(remaining));
        }
    }
    for (e, other) in entries.iter_mut().zip(&taken) {
        let (changed, removed) = other
            .as_ref()
            .map_or((&changed, &removed), |o| (&o.0, &o.1));
        e.fields = e.fields.difference(changed).difference(removed);
    }
    let object_changed = !changed.is_empty() || !removed.is_empty() || live.is_none();
    let me_is_kubectl = me.manager == KUBECTL;
    let mut mine = me;
    mine.time = if object_changed || last_time.is_none() {
        Some(object::now())
    } else {
        last_time
    };
    entries.push(mine);
    // A built-in type has no nulls where the configuration wrote them (upstream's typed
    // objects drop them, and defaults fill what they cleared); a custom resource's
    // schema decides (`nullable`).
    if def.typed.is_some() {
        typed::drop_applied_nulls(&mut pruned, &config, node);
    }
    set_managed(&mut pruned, encode(entries));
    // kubectl's server-side apply keeps a client-side apply annotation in step, so a
    // later client-side apply still works (upstream's lastAppliedUpdater).
    if me_is_kubectl && live.is_some_and(|l| last_applied(l).is_some()) {
        let mut recorded = config.clone();
        if let Some(a) = recorded
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            a.remove(LAST_APPLIED);
            if a.is_empty()
                && let Some(m) = recorded
                    .pointer_mut("/metadata")
                    .and_then(Value::as_object_mut)
            {
                m.remove("annotations");
            }
        }
        if let Some(meta) = object::meta_mut(&mut pruned) {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(a) = annotations.as_object_mut() {
                // As upstream's json.Encoder writes it: with a final newline.
                a.insert(LAST_APPLIED.into(), Value::String(format!("{recorded}\n")));
            }
        }
    }
    Ok(pruned)
}

/// Removes from `merged` (named as the request's version names fields) what the
/// applier owned last time (`last`, recorded in its version) and no longer does, unless
/// a manager — the applier's new set `applied` included — still owns it or something
/// below it. As upstream's prune, this is worked out in the version the last set names
/// fields in; what managers of other versions own is kept as their versions name it
/// (a removal that would take one of their fields is not made). Nothing is pruned when
/// that version is no longer served.
fn prune(
    converter: Converter,
    merged: Value,
    (last, last_version): (&Set, &str),
    applied: &Set,
    entries: &[Entry],
) -> Value {
    if last.is_empty() || !converter.served(last_version) {
        return merged;
    }
    let in_last = converter.naming(last_version);
    // What the managers of each naming own; the applier's new set is the request's.
    let mut owned: Vec<(Naming, Set)> = vec![(None, applied.clone())];
    for e in entries {
        let naming = converter.naming(&e.api_version);
        match owned.iter_mut().find(|(n, _)| Converter::same(n, &naming)) {
            Some((_, set)) => *set = set.union(&e.fields),
            None => owned.push((naming, e.fields.clone())),
        }
    }
    let (keep, others): (Vec<_>, Vec<_>) = owned
        .iter()
        .filter(|(_, s)| !s.is_empty())
        .partition(|(n, _)| Converter::same(n, &in_last));
    let keep = keep.first().map(|(_, s)| s);
    let node = converter.node(&in_last);
    let mut pruned = converter.convert(merged, &None, &in_last);
    let mut dropped = last.paths();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in dropped {
        if keep.is_some_and(|k| k.has_prefix(&path)) || typed::is_key_field(&path) {
            continue;
        }
        if others.is_empty() {
            typed::remove(&mut pruned, &path, node);
            continue;
        }
        let mut trial = pruned.clone();
        typed::remove(&mut trial, &path, node);
        let takes_owned = others.iter().any(|(naming, set)| {
            let before = converter.convert(pruned.clone(), &in_last, naming);
            let after = converter.convert(trial.clone(), &in_last, naming);
            let change = typed::compare(&before, &after, converter.node(naming));
            change
                .removed
                .union(&change.modified)
                .paths()
                .iter()
                .any(|p| set.has_prefix(p))
        });
        if !takes_owned {
            pruned = trial;
        }
    }
    converter.convert(pruned, &in_last, &None)
}

/// What an apply through `/status` can set: the status. The rest is the status
/// strategy's reset fields (upstream strips them from the configuration before it
/// merges), so it neither changes nor conflicts nor is owned; the identity is kept.
fn status_only(config: &Value) -> Value {
    let mut out = Map::new();
    for key in ["apiVersion", "kind", "status"] {
        if let Some(v) = config.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    let mut meta = Map::new();
    for key in ["name", "namespace", "uid", "resourceVersion"] {
        if let Some(v) = config.pointer(&format!("/metadata/{key}")) {
            meta.insert(key.into(), v.clone());
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    Value::Object(out)
}

/// kubectl's client-side apply annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The manager `kubectl apply --server-side` applies as.
const KUBECTL: &str = "kubectl";

fn last_applied(live: &Value) -> Option<Value> {
    let text = live
        .pointer("/metadata/annotations")?
        .get(LAST_APPLIED)?
        .as_str()?;
    serde_json::from_str::<Value>(text)
        .ok()
        .filter(Value::is_object)
}

/// The fields of the last client-side applied configuration that still have the
/// value it gave them.
fn last_applied_fields(live: &Value, node: Node, ignored: &Set) -> Option<Set> {
    let applied = last_applied(live)?;
    let set = typed::strip(&typed::field_set(&applied, node), ignored);
    let changed = typed::compare(&applied, live, node);
    Some(set.difference(&changed.modified))
}

/// 409 in kube-apiserver's words: `Apply failed with 1 conflict: conflict with
/// "kubectl-client-side-apply" using apps/v1: .spec.replicas`.
fn conflict_error(mut conflicts: Vec<(String, Vec<Path>)>) -> ApiError {
    conflicts.sort_by(|a, b| a.0.cmp(&b.0));
    let count: usize = conflicts.iter().map(|(_, p)| p.len()).sum();
    let mut causes = Vec::new();
    for (manager, paths) in &conflicts {
        for path in paths {
            causes.push(json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {manager}"),
                "field": Display(path).to_string(),
            }));
        }
    }
    let message = if count == 1 {
        let (manager, paths) = &conflicts[0];
        format!(
            "Apply failed with 1 conflict: conflict with {manager}: {}",
            Display(&paths[0])
        )
    } else {
        let mut lines = Vec::new();
        for (manager, paths) in &conflicts {
            lines.push(format!("conflicts with {manager}:"));
            lines.extend(paths.iter().map(|p| format!("- {}", Display(p))));
        }
        format!("Apply failed with {count} conflicts: {}", lines.join("\n"))
    };
    let mut err = ApiError::new(409, "Conflict", message);
    err.details = Some(json!({"causes": causes}));
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_ten_updaters_the_oldest_merge_into_ancient_changes() {
        let entry = |i: usize, version: &str| Entry {
            manager: format!("m{i:02}"),
            operation: UPDATE.into(),
            api_version: version.into(),
            time: Some(format!("2026-12-06T01:00:{i:02}Z")),
            subresource: String::new(),
            fields: Set::from_fields_v1(
                &json!({"f:metadata": {"f:labels": {format!("f:l{i}"): {}}}}),
            )
            .expect("fieldsV1"),
        };
        let mut applier = entry(99, "v1");
        applier.operation = APPLY.into();
        applier.manager = "kubectl".into();
        let mut entries: Vec<Entry> = (0..12).map(|i| entry(i, "v1")).collect();
        entries.push(applier);
        let Some(Value::Array(list)) = encode(entries) else {
            panic!("entries encoded");
        };
        let updaters: Vec<&Value> = list.iter().filter(|e| e["operation"] == UPDATE).collect();
        assert_eq!(updaters.len(), MAX_UPDATE_MANAGERS, "{list:?}");
        let ancient = updaters
            .iter()
            .find(|e| e["manager"] == ANCIENT_CHANGES)
            .expect("an ancient-changes entry");
        // The three oldest merged; it carries the newest time merged.
        assert_eq!(ancient["time"], "2026-12-06T01:00:02Z");
        let labels = ancient["fieldsV1"]["f:metadata"]["f:labels"]
            .as_object()
            .expect("labels");
        assert_eq!(
            labels.keys().collect::<Vec<_>>(),
            vec!["f:l0", "f:l1", "f:l2"]
        );
        assert!(!updaters.iter().any(|e| e["manager"] == "m02"));
        assert!(updaters.iter().any(|e| e["manager"] == "m03"));
        assert!(list.iter().any(|e| e["manager"] == "kubectl"));
    }

    #[test]
    fn conflict_messages_are_upstreams() {
        let path = vec![
            PathElement::Field("spec".into()),
            PathElement::Field("replicas".into()),
        ];
        let one = conflict_error(vec![(
            "\"kubectl-client-side-apply\" using apps/v1".into(),
            vec![path.clone()],
        )]);
        assert_eq!(one.code, 409);
        assert_eq!(
            one.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        );
        let mut other = path.clone();
        other[1] = PathElement::Field("paused".into());
        let two = conflict_error(vec![("\"b\"".into(), vec![path, other])]);
        assert_eq!(
            two.message,
            "Apply failed with 2 conflicts: conflicts with \"b\":\n- .spec.replicas\n- .spec.paused"
        );
    }

    #[test]
    fn managed_fields_decode_and_encode() {
        let list = json!([{
            "manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1",
            "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}}}
        }]);
        let Ok(Decoded::Entries(entries)) = decode(Some(&list)) else {
            panic!("decode");
        };
        assert_eq!(encode(entries), Some(list));
        assert_eq!(decode(Some(&json!([{}]))), Ok(Decoded::Reset));
        assert_eq!(decode(Some(&json!([]))), Ok(Decoded::Reset));
        assert!(decode(Some(&json!([{"operation": "Patch"}]))).is_err());
    }
}
