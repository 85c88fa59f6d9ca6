use super::*;
use crate::raft_types::test_entries::log_id;
use crate::raft_types::{Entry, LogId, SnapshotMeta, TypeConfig};
use crate::vault::Command;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, Vote};

fn noop_fsync() -> FsyncObserver {
    Arc::new(|_| {})
}

fn entry(term: u64, index: u64) -> Entry {
    let cmd = Command::InstallDataKey {
        by: None,
        kek_id: None,
        version: index as u32,
        wrapped: vec![1],
        at_ms: index,
        by_admin: false,
    };
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(cmd),
    }
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
    log.append(entries, IOFlushed::<TypeConfig>::signal(tx))
        .await
        .unwrap();
    rx.await.unwrap().unwrap();
}

/// The ids of every entry the log holds.
async fn log_ids(log: &mut LogStore) -> Vec<LogId> {
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    entries.iter().map(|e| e.log_id).collect()
}

async fn roundtrip(mode: WriterMode) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kura.redb");
    {
        let store = Store::open(&path, mode, SyncPolicy::Fsync, noop_fsync()).unwrap();
        let mut log = LogStore::new(store.clone());
        append(&mut log, (1..=10).map(|i| entry(1, i)).collect()).await;
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        log.truncate_after(Some(log_id(1, 8))).await.unwrap();
        append(&mut log, vec![entry(2, 9)]).await;
        log.purge(log_id(1, 3)).await.unwrap();
        store.set_cluster_id("c-1").await.unwrap();
        assert!(
            store.set_cluster_id("c-2").await.is_err(),
            "a node never changes cluster"
        );
    }
    // A task writer lets go of the database once its task has seen the queue close.
    tokio::task::yield_now().await;
    let store = Store::open(&path, mode, SyncPolicy::Fsync, noop_fsync()).unwrap();
    let mut log = LogStore::new(store.clone());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(2, 9)));
    let got = log_ids(&mut log).await;
    let want: Vec<_> = (4..=8)
        .map(|i| log_id(1, i))
        .chain([log_id(2, 9)])
        .collect();
    assert_eq!(got, want);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    assert_eq!(store.cluster_id().unwrap().as_deref(), Some("c-1"));
    assert!(store.has_raft_state().unwrap());
}

#[tokio::test]
async fn log_vote_truncate_purge_survive_reopen_threaded() {
    roundtrip(WriterMode::Threaded).await;
}

#[tokio::test]
async fn log_vote_truncate_purge_survive_reopen_task() {
    roundtrip(WriterMode::Task).await;
}

/// A threaded store in a temporary directory that counts its durable commits.
#[tokio::test]
async fn the_logs_tail_stays_in_memory_within_its_bound_and_reads_span_memory_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kura.redb");
    let total = RECENT_ENTRIES as u64 + 700;
    let ids_of = |entries: Vec<Entry>| entries.iter().map(|e| e.log_id).collect::<Vec<_>>();
    {
        let store =
            Store::open(&path, WriterMode::Threaded, SyncPolicy::Fsync, noop_fsync()).unwrap();
        let mut log = LogStore::new(store.clone());
        for first in (1..=total).step_by(100) {
            let last = (first + 99).min(total);
            append(&mut log, (first..=last).map(|i| entry(1, i)).collect()).await;
            let held = store.tail.indexes().len();
            assert!(held <= RECENT_ENTRIES, "{held} entries held in memory");
        }
        assert_eq!(store.tail.indexes().len(), RECENT_ENTRIES);
        // All of it: the oldest 700 from the files, the rest from memory, in order.
        let all = ids_of(log.try_get_log_entries(1..=total).await.unwrap());
        assert_eq!(all, (1..=total).map(|i| log_id(1, i)).collect::<Vec<_>>());
        // A conflicting suffix replaced: readers see the new entries, not the old ones.
        log.truncate_after(Some(log_id(1, total - 5)))
            .await
            .unwrap();
        append(
            &mut log,
            (total - 4..=total + 2).map(|i| entry(2, i)).collect(),
        )
        .await;
        let tail = ids_of(log.try_get_log_entries(total - 6..).await.unwrap());
        let want: Vec<_> = (total - 6..=total - 5)
            .map(|i| log_id(1, i))
            .chain((total - 4..=total + 2).map(|i| log_id(2, i)))
            .collect();
        assert_eq!(tail, want);
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(2, total + 2))
        );
    }
    // The files alone hold the same log.
    let store = Store::open(&path, WriterMode::Threaded, SyncPolicy::Fsync, noop_fsync()).unwrap();
    assert!(store.tail.indexes().is_empty());
    let mut log = LogStore::new(store);
    let tail = ids_of(log.try_get_log_entries(total - 6..).await.unwrap());
    assert_eq!(tail.first(), Some(&log_id(1, total - 6)));
    assert_eq!(tail.last(), Some(&log_id(2, total + 2)));
    assert_eq!(tail.len(), 9);
}

#[tokio::test]
async fn entries_whose_append_failed_are_not_read_back() {
    let disk = SimDisk::new();
    let store = Store::open_sim(&disk, SyncPolicy::Fsync, noop_fsync()).unwrap();
    let mut log = LogStore::new(store.clone());
    append(&mut log, (1..=3).map(|i| entry(1, i)).collect()).await;
    // The disk goes away under the running store: the next commit fails.
    disk.crash();
    let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
    log.append(
        (4..=5).map(|i| entry(1, i)).collect::<Vec<_>>(),
        IOFlushed::<TypeConfig>::signal(tx),
    )
    .await
    .unwrap();
    assert!(rx.await.unwrap().is_err(), "the append reports its failure");
    let ids = store.tail.indexes();
    assert_eq!(ids, vec![1, 2, 3], "entries that never reached the files");
    // openraft handed the log entries 4 and 5, and may read them back to apply them
    // (the other nodes may have committed them): a read must fail, not come back with
    // 1..=3 as if that were the whole range.
    assert!(
        log.try_get_log_entries(1..6).await.is_err(),
        "a read after a failed append fails rather than come back short"
    );
}

fn counting_store() -> (
    tempfile::TempDir,
    Store,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let dir = tempfile::tempdir().unwrap();
    let commits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = commits.clone();
    let observer: FsyncObserver = Arc::new(move |_| {
        c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let store = Store::open(
        &dir.path().join("k.redb"),
        WriterMode::Threaded,
        SyncPolicy::Fsync,
        observer,
    )
    .unwrap();
    (dir, store, commits)
}

#[tokio::test]
async fn fresh_store_has_no_raft_state_and_canary_commits() {
    let (_dir, store, count) = counting_store();
    assert!(!store.has_raft_state().unwrap());
    assert_eq!(store.cluster_id().unwrap(), None);
    store.canary().await.unwrap();
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the canary is one durable commit"
    );
}

#[tokio::test]
async fn a_vote_held_up_by_a_stalled_disk_shows_as_being_saved_until_it_is() {
    let (_dir, store, _) = counting_store();
    let mut log = LogStore::new(store.clone());
    assert!(!store.saving_vote());
    log.save_vote(&Vote::new(1, 1)).await.unwrap();
    assert!(!store.saving_vote(), "a saved vote is not being saved");

    let stalled = crate::faults::FaultState {
        storage_stalled: true,
        ..Default::default()
    };
    store.faults().set(&stalled);
    let mut saving = log.clone();
    let save = tokio::spawn(async move { saving.save_vote(&Vote::new(2, 3)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(store.saving_vote(), "the vote waits on the disk");
    assert!(!save.is_finished());
    store.faults().set(&Default::default());
    save.await.unwrap().unwrap();
    assert!(!store.saving_vote());
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 3)));
}

#[tokio::test]
async fn concurrent_appends_are_group_committed() {
    let (_dir, store, commits) = counting_store();
    let mut log = LogStore::new(store);
    let mut waits = Vec::new();
    for i in 1..=200 {
        let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
        log.append(vec![entry(1, i)], IOFlushed::<TypeConfig>::signal(tx))
            .await
            .unwrap();
        waits.push(rx);
    }
    // Every entry is readable as soon as append returns, durable or not.
    assert_eq!(log.try_get_log_entries(1..=200).await.unwrap().len(), 200);
    for w in waits {
        w.await.unwrap().unwrap();
    }
    let n = commits.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        n < 200,
        "200 queued appends took {n} commits; expected batching"
    );
    assert_eq!(log.try_get_log_entries(1..=200).await.unwrap().len(), 200);
}

/// Appends ten entries to a store on a simulated disk, crashes the disk, and returns
/// the last log index the reopened store finds.
async fn last_index_after_crash(sync: SyncPolicy) -> Option<u64> {
    let disk = SimDisk::new();
    {
        let store = Store::open_sim(&disk, sync, noop_fsync()).unwrap();
        let mut log = LogStore::new(store);
        append(&mut log, (1..=10).map(|i| entry(1, i)).collect()).await;
        // The power goes before the process lets go of its database.
        disk.crash();
    }
    tokio::task::yield_now().await;
    let store = Store::open_sim(&disk, sync, noop_fsync()).unwrap();
    let state = LogStore::new(store).get_log_state().await.unwrap();
    state.last_log_id.map(|l| l.index)
}

#[tokio::test]
async fn acknowledged_appends_survive_a_crash_only_with_fsync() {
    assert_eq!(last_index_after_crash(SyncPolicy::Fsync).await, Some(10));
    assert_eq!(
        last_index_after_crash(SyncPolicy::UnsafeNoFsync).await,
        None
    );
}

#[tokio::test]
async fn a_database_with_the_log_inside_moves_it_into_the_log_files_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kura.redb");
    {
        // As a node before the log had its own files left it.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            for i in 1..=5 {
                log.insert(i, encode(&entry(1, i)).as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let store = Store::open(&path, WriterMode::Task, SyncPolicy::Fsync, noop_fsync()).unwrap();
    let mut log = LogStore::new(store.clone());
    let got = log_ids(&mut log).await;
    assert_eq!(got, (1..=5).map(|i| log_id(1, i)).collect::<Vec<_>>());
    let old_rows = {
        let txn = store.db.begin_read().unwrap();
        let table = txn.open_table(LOG).unwrap();
        table.iter().unwrap().count()
    };
    assert_eq!(old_rows, 0, "the old table is emptied");
    append(&mut log, vec![entry(1, 6)]).await;
    drop((log, store));
    tokio::task::yield_now().await;
    let store = Store::open(&path, WriterMode::Task, SyncPolicy::Fsync, noop_fsync()).unwrap();
    let state = LogStore::new(store).get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 6)));
}

#[tokio::test]
async fn appends_are_durable_in_the_log_files_not_the_database() {
    // One fsync'd commit per append batch, and the entries are in `kura.wal/`.
    let (dir, store, commits) = counting_store();
    let mut log = LogStore::new(store.clone());
    append(&mut log, (1..=3).map(|i| entry(1, i)).collect()).await;
    assert_eq!(commits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("k.wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, vec![format!("{:020}.wal", 1)]);
    let txn = store.db.begin_read().unwrap();
    assert_eq!(txn.open_table(LOG).unwrap().iter().unwrap().count(), 0);
}

/// The vault after the first `keys` commands of [`entry`].
fn vault_after(keys: u64) -> crate::vault::VaultState {
    let mut vault = crate::vault::VaultState::default();
    for i in 1..=keys {
        if let EntryPayload::Normal(cmd) = &entry(1, i).payload {
            vault.apply(cmd);
        }
    }
    vault
}

/// Rows in all of `tables`.
fn rows(tables: &impl crate::vault::Tables) -> u64 {
    let mut n = 0;
    for t in crate::vault::TableId::ALL {
        tables.scan(
            t,
            std::ops::Bound::Unbounded,
            std::ops::Bound::Unbounded,
            false,
            &mut |_, _| {
                n += 1;
                true
            },
        );
    }
    n
}

/// The digest of the vault `sm` serves.
fn served(sm: &StateMachine) -> String {
    sm.shared()
        .read(|v| crate::vault::tables::digest(v.tables()))
        .unwrap()
}

fn snapshot_at(store: &Store, index: u64) -> (SnapshotMeta, crate::raft_types::SnapshotData) {
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(1, index)),
        last_membership: Default::default(),
    };
    let data = snapshot_stream::encode_tables(vault_after(index).tables());
    (meta, store.snapshot_from_bytes(&data).unwrap())
}

/// Applies `entries` through openraft's state machine interface.
async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) {
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.unwrap();
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn snapshots_live_in_their_own_files_and_an_older_one_never_replaces_a_newer() {
    let (dir, store, _) = counting_store();
    let mut sm = StateMachine::open(store.clone()).unwrap();
    let (meta, data) = snapshot_at(&store, 5);
    sm.install_snapshot(&meta, data).await.unwrap();
    assert_eq!(file_names(&dir.path().join("k.snap")).len(), 1);
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(5).tables())
    );
    assert_eq!(
        file_names(&dir.path().join("k.vault")).len(),
        1,
        "the old generation went"
    );

    // A build of an older state that finishes after the install is not kept.
    let (old_meta, old_data) = snapshot_at(&store, 3);
    store
        .record_snapshot(&old_meta, old_data.id())
        .await
        .unwrap();
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 5)));
    assert_eq!(file_names(&dir.path().join("k.snap")).len(), 1);

    // A newer one replaces it, file and all.
    let (new_meta, new_data) = snapshot_at(&store, 7);
    let before = file_names(&dir.path().join("k.snap"));
    sm.install_snapshot(&new_meta, new_data).await.unwrap();
    let after = file_names(&dir.path().join("k.snap"));
    assert_eq!(after.len(), 1);
    assert_ne!(after, before, "the old file is removed");

    drop((sm, store));
    tokio::task::yield_now().await;
    let store = Store::open(
        &dir.path().join("k.redb"),
        WriterMode::Threaded,
        SyncPolicy::Fsync,
        noop_fsync(),
    )
    .unwrap();
    let mut sm = StateMachine::open(store).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 7)));
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(7).tables())
    );
}

/// A threaded store and its state machine, with the first two entries applied.
async fn vault_with_two_entries() -> (tempfile::TempDir, Store, StateMachine) {
    let (dir, store, _) = counting_store();
    let mut sm = StateMachine::open(store.clone()).unwrap();
    apply(&mut sm, (1..=2).map(|i| entry(1, i)).collect()).await;
    (dir, store, sm)
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_the_vault_stays_as_it_was() {
    let (_dir, store, mut sm) = vault_with_two_entries().await;
    let before = served(&sm);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(1, 9)),
        last_membership: Default::default(),
    };
    let mut data = snapshot_stream::encode_tables(vault_after(9).tables());
    let mid = data.len() / 2;
    data[mid] ^= 0x40;
    let damaged = store.snapshot_from_bytes(&data).unwrap();
    let e = sm.install_snapshot(&meta, damaged).await.unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    assert_eq!(served(&sm), before);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 2)));
    assert!(sm.get_current_snapshot().await.unwrap().is_none());
}

/// Uploads `data` as a peer's chunks of `chunk` bytes; the upload, finished.
async fn upload(store: &Store, data: &[u8], chunk: usize) -> crate::raft_types::SnapshotData {
    let mut up = store.receive_snapshot().unwrap();
    for c in data.chunks(chunk) {
        up.append(bytes::Bytes::copy_from_slice(c)).await.unwrap();
    }
    up.finish().unwrap()
}

/// Waits (a few seconds at most) until the vault directory holds `n` files.
async fn vault_files_become(dir: &Path, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let names = file_names(&dir.join("k.vault"));
        if names.len() == n {
            return names;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    file_names(&dir.join("k.vault"))
}

#[tokio::test]
async fn a_received_snapshot_is_written_into_a_new_vault_as_it_arrives() {
    let (dir, store, mut sm) = vault_with_two_entries().await;
    let current = file_names(&dir.path().join("k.vault"));
    assert_eq!(current.len(), 1);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(1, 40)),
        last_membership: Default::default(),
    };
    let stream = snapshot_stream::encode_tables(vault_after(40).tables());
    // Chunks that cut the stream's frames and records anywhere.
    let data = upload(&store, &stream, 97).await;
    // The new generation exists before the install is asked for...
    let during = vault_files_become(dir.path(), 2).await;
    let written: Vec<&String> = during.iter().filter(|n| !current.contains(n)).collect();
    assert_eq!(written.len(), 1, "{during:?}");
    let written = written[0].clone();
    sm.install_snapshot(&meta, data).await.unwrap();
    // ...and is the one installed, holding exactly the snapshot's vault.
    assert_eq!(file_names(&dir.path().join("k.vault")), vec![written]);
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(40).tables())
    );
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 40)));
}

#[tokio::test]
async fn an_upload_given_up_or_damaged_leaves_no_vault_file_and_installs_from_its_file() {
    let (dir, store, mut sm) = vault_with_two_entries().await;
    let before = served(&sm);
    let stream = snapshot_stream::encode_tables(vault_after(30).tables());

    // Given up halfway (a new upload replaced it): its generation goes.
    let mut up = store.receive_snapshot().unwrap();
    up.append(bytes::Bytes::copy_from_slice(&stream[..stream.len() / 2]))
        .await
        .unwrap();
    drop(up);
    assert_eq!(vault_files_become(dir.path(), 1).await.len(), 1);

    // Damaged: the generation written on arrival is refused and goes; installing
    // reads the file, and refuses it too; the vault stays as it was.
    let mut damaged = stream.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    let data = upload(&store, &damaged, 64).await;
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(1, 30)),
        last_membership: Default::default(),
    };
    let e = sm.install_snapshot(&meta, data).await.unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    assert_eq!(served(&sm), before);
    assert_eq!(vault_files_become(dir.path(), 1).await.len(), 1);

    // Finished but never installed, then replaced by the next upload: only the
    // installed generation stays.
    let _unused = upload(&store, &stream, 1000).await;
    let data = upload(&store, &stream, 1000).await;
    sm.install_snapshot(&meta, data).await.unwrap();
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(30).tables())
    );
    assert_eq!(vault_files_become(dir.path(), 1).await.len(), 1);
}

/// What the peer server does with a finished upload before openraft installs it.
#[tokio::test]
async fn a_received_snapshots_vault_is_written_before_its_install_and_a_bad_one_leaves_nothing() {
    let (dir, store, mut sm) = vault_with_two_entries().await;
    let before = served(&sm);
    let snap_files = || file_names(&dir.path().join("k.snap"));
    let stream = snapshot_stream::encode_tables(vault_after(30).tables());
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(1, 30)),
        last_membership: Default::default(),
    };

    // Damaged: the generation written on arrival is refused, and writing it from the
    // file fails too; neither the generation nor the snapshot's file stays.
    let mut damaged = stream.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    let data = upload(&store, &damaged, 64).await;
    let e = store.write_received(&data).await.unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    assert_eq!(vault_files_become(dir.path(), 1).await.len(), 1);
    assert!(snap_files().is_empty(), "{:?}", snap_files());
    assert_eq!(served(&sm), before);

    // Sound: written before the install, which only switches to it.
    let data = upload(&store, &stream, 1000).await;
    store.write_received(&data).await.unwrap();
    assert_eq!(file_names(&dir.path().join("k.vault")).len(), 2);
    sm.install_snapshot(&meta, data).await.unwrap();
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(30).tables())
    );
    assert_eq!(vault_files_become(dir.path(), 1).await.len(), 1);
}

#[tokio::test]
async fn a_received_snapshot_that_would_eat_into_the_reserve_is_refused_and_leaves_nothing() {
    let (dir, store, sm) = vault_with_two_entries().await;
    let before = served(&sm);
    let stream = snapshot_stream::encode_tables(vault_after(30).tables());
    let data = upload(&store, &stream, 1000).await;
    assert!(store.room_for(1 << 20).is_ok(), "no reserve kept yet");
    // A reserve no filesystem here has free.
    store.keep_room(dir.path().to_owned(), u64::MAX / 2);
    let e = store.room_for(0).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    let e = store.write_received(&data).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
    assert!(
        e.to_string().contains("health.storage_min_free_bytes"),
        "{e}"
    );
    assert_eq!(vault_files_become(dir.path(), 1).await.len(), 1);
    assert!(file_names(&dir.path().join("k.snap")).is_empty());
    assert_eq!(served(&sm), before);
}

#[tokio::test]
async fn applies_are_durable_only_from_a_durable_commit_and_a_snapshot_makes_one() {
    let disk = SimDisk::new();
    let open = |disk: &SimDisk| {
        let store = Store::open_sim(disk, SyncPolicy::Fsync, noop_fsync()).unwrap();
        let log = LogStore::new(store.clone());
        (StateMachine::open(store).unwrap(), log)
    };
    let (mut sm, mut log) = open(&disk);
    append(&mut log, (1..=6).map(|i| entry(1, i)).collect()).await;
    apply(&mut sm, (1..=3).map(|i| entry(1, i)).collect()).await;
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(3).tables())
    );
    // A power cut: the process's handles go after the disk forgot what was not synced.
    disk.crash();
    drop((sm, log));
    // Applied without an fsync: gone, and openraft applies the log again from 0.
    let (mut sm, log) = open(&disk);
    assert_eq!(sm.applied_state().await.unwrap().0, None);
    apply(&mut sm, (1..=4).map(|i| entry(1, i)).collect()).await;
    let mut builder = sm.get_snapshot_builder().await;
    let snap = openraft::storage::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 4)));
    // Applied later, not yet durable: lost again, but never the snapshot's state.
    apply(&mut sm, vec![entry(1, 5)]).await;
    disk.crash();
    drop((sm, builder, log));
    let (mut sm, log) = open(&disk);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 4)));
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(4).tables())
    );
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 4)));
    // Applies never commit durably themselves, however long since the last durable
    // commit: the durable loop does, once one is due (here called as it calls it).
    tokio::time::sleep(sm::DURABLE_EVERY).await;
    apply(&mut sm, vec![entry(1, 5), entry(1, 6)]).await;
    assert_eq!(
        sm.shared().make_durable(true).unwrap(),
        sm::Durability::Durable
    );
    disk.crash();
    drop((sm, log));
    let (mut sm, mut log) = open(&disk);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 6)));
    // Entries this node's log does not hold durably yet (a follower may apply what a
    // quorum holds): the vault waits for them, however due its durable commit is.
    tokio::time::sleep(sm::DURABLE_EVERY).await;
    apply(&mut sm, vec![entry(1, 7)]).await;
    assert_eq!(
        sm.shared().make_durable(true).unwrap(),
        sm::Durability::LogBehind
    );
    append(&mut log, vec![entry(1, 7)]).await;
    disk.crash();
    drop((sm, log));
    let (mut sm, _log) = open(&disk);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 6)));
}

#[tokio::test]
async fn a_log_that_no_longer_reaches_the_vaults_durable_apply_is_refused_at_open() {
    let disk = SimDisk::new();
    let store = Store::open_sim(&disk, SyncPolicy::Fsync, noop_fsync()).unwrap();
    let mut log = LogStore::new(store.clone());
    let mut sm = StateMachine::open(store).unwrap();
    append(&mut log, (1..=6).map(|i| entry(1, i)).collect()).await;
    tokio::time::sleep(sm::DURABLE_EVERY).await;
    apply(&mut sm, (1..=6).map(|i| entry(1, i)).collect()).await;
    assert_eq!(
        sm.shared().make_durable(true).unwrap(),
        sm::Durability::Durable
    );
    disk.crash();
    drop((sm, log));
    // Entry 6's record lost from the disk (zeros where it was): a crash never does
    // that to an entry the vault applied durably, which waits for the log.
    let dir = disk.wal_dir();
    let seg = dir.open_existing(dir.list().unwrap()[0]).unwrap();
    let mut bytes = vec![0; seg.len().unwrap() as usize];
    seg.read_at(0, &mut bytes).unwrap();
    let ends = wal::record_ends(&bytes);
    assert_eq!(ends.len(), 6);
    seg.write_at(ends[4] as u64, &vec![0; ends[5] - ends[4]])
        .unwrap();
    seg.sync().unwrap();
    let e = Store::open_sim(&disk, SyncPolicy::Fsync, noop_fsync())
        .err()
        .expect("refused");
    assert!(
        e.to_string().contains("ends at entry 5 (zeros follow)")
            && e.to_string().contains("durable up to entry 6"),
        "{e}"
    );
    // Without fsync nothing is known durable: it opens, with what is left.
    let store = Store::open_sim(&disk, SyncPolicy::UnsafeNoFsync, noop_fsync()).unwrap();
    assert_eq!(store.wal.lock().unwrap().last_index(), Some(5));
}

#[tokio::test]
async fn the_committed_marker_waits_for_the_next_transaction_or_a_second() {
    let disk = SimDisk::new();
    let store = Store::open_sim(&disk, SyncPolicy::Fsync, noop_fsync()).unwrap();
    let mut log = LogStore::new(store.clone());
    append(&mut log, (1..=3).map(|i| entry(1, i)).collect()).await;
    log.save_committed(Some(log_id(1, 2))).await.unwrap();
    append(&mut log, vec![entry(1, 4)]).await;
    // Log appends alone do not write the database.
    assert_eq!(log.read_committed().await.unwrap(), None);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 2)));
    // A transaction the database needs anyway carries it at once.
    log.save_committed(Some(log_id(1, 4))).await.unwrap();
    store.set_cluster_id("c-1").await.unwrap();
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 4)));
}

#[tokio::test]
async fn the_offline_reader_sees_the_vault_file_and_the_committed_log_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kura.redb");
    {
        let store =
            Store::open(&path, WriterMode::Threaded, SyncPolicy::Fsync, noop_fsync()).unwrap();
        let mut log = LogStore::new(store.clone());
        let mut sm = StateMachine::open(store.clone()).unwrap();
        append(&mut log, (1..=5).map(|i| entry(1, i)).collect()).await;
        apply(&mut sm, (1..=2).map(|i| entry(1, i)).collect()).await;
        // The file holds 2; 3 and 4 are applied into the buffer only.
        assert_eq!(
            sm.shared().make_durable(false).unwrap(),
            sm::Durability::Durable
        );
        apply(&mut sm, vec![entry(1, 3)]).await;
        apply(&mut sm, vec![entry(1, 4)]).await;
        log.save_committed(Some(log_id(1, 4))).await.unwrap();
        store.set_cluster_id("c").await.unwrap();
    }
    tokio::task::yield_now().await;
    let offline = offline::read_vault(&path).unwrap();
    assert_eq!(offline.applied_index, 2);
    assert_eq!(offline.replayed_entries, 2);
    let n = offline.vault.audit().len();
    assert_eq!(crate::vault::Tables::failure(offline.vault.tables()), None);
    assert_eq!(n, 4);
    assert_eq!(
        crate::vault::tables::digest(offline.vault.tables()),
        crate::vault::tables::digest(vault_after(4).tables())
    );
}

#[tokio::test]
async fn a_quiet_vault_is_made_durable_within_a_second_or_so() {
    let disk = SimDisk::new();
    let store = Store::open_sim(&disk, SyncPolicy::Fsync, noop_fsync()).unwrap();
    let mut log = LogStore::new(store.clone());
    let mut sm = StateMachine::open(store.clone()).unwrap();
    tokio::spawn(sm::durable_loop(
        Arc::downgrade(&sm.shared()),
        WriterMode::Task,
    ));
    append(&mut log, (1..=3).map(|i| entry(1, i)).collect()).await;
    apply(&mut sm, (1..=3).map(|i| entry(1, i)).collect()).await;
    // No further batch comes to carry a durable commit: the loop does.
    tokio::time::sleep(sm::DURABLE_EVERY + sm::DURABLE_EVERY / 2).await;
    disk.crash();
    drop((sm, log, store));
    let store = Store::open_sim(&disk, SyncPolicy::Fsync, noop_fsync()).unwrap();
    let mut sm = StateMachine::open(store).unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 3)));
}

#[tokio::test]
async fn applies_go_into_the_buffer_and_the_file_takes_them_a_flush_at_a_time() {
    let disk = SimDisk::new();
    let store = Store::open_sim(&disk, SyncPolicy::Fsync, noop_fsync()).unwrap();
    let mut log = LogStore::new(store.clone());
    let mut sm = StateMachine::open(store.clone()).unwrap();
    let shared = sm.shared();
    append(&mut log, (1..=40).map(|i| entry(1, i)).collect()).await;
    apply(&mut sm, (1..=3).map(|i| entry(1, i)).collect()).await;
    // Read at once, from the buffer; the file has none of it.
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(3).tables())
    );
    assert_eq!(shared.file_applied(), None);
    // The file's rows (the snapshot interval's measure) count only what it holds.
    assert_eq!(shared.rows().unwrap(), 0);
    // A snapshot's view taken now stays as it is while later entries are applied and
    // written out.
    let mut builder = sm.get_snapshot_builder().await;
    apply(&mut sm, vec![entry(1, 4)]).await;
    assert_eq!(shared.make_durable(false).unwrap(), sm::Durability::Durable);
    assert_eq!(shared.file_applied(), Some(log_id(1, 4)));
    assert_eq!(shared.rows().unwrap(), rows(vault_after(4).tables()));
    assert!(shared.rows().unwrap() > 4);
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(4).tables())
    );
    store.want_snapshot_file();
    let snap = openraft::storage::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 3)));
    assert_eq!(
        stream_digest(&snap.snapshot),
        crate::vault::tables::digest(vault_after(3).tables())
    );
    // A full buffer is written out by the apply that fills it, without the loop.
    shared.set_flush_keys(10);
    let mut i = 5;
    while shared.file_applied() == Some(log_id(1, 4)) {
        assert!(i <= 40, "the buffer was never written out");
        apply(&mut sm, vec![entry(1, i)]).await;
        i += 1;
    }
    assert_eq!(shared.file_applied(), Some(log_id(1, i - 1)));
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(i - 1).tables())
    );
}

#[tokio::test]
async fn a_batch_too_large_to_merge_under_the_lock_reads_as_if_applied_in_place() {
    let disk = SimDisk::new();
    let store = Store::open_sim(&disk, SyncPolicy::Fsync, noop_fsync()).unwrap();
    let mut log = LogStore::new(store.clone());
    let mut sm = StateMachine::open(store.clone()).unwrap();
    append(&mut log, (1..=610).map(|i| entry(1, i)).collect()).await;
    // A buffer bound no in-place step fits under sends the whole batch to the pool's
    // apply, which merges it in one piece: more keys than are merged under the lock,
    // so into a copy of the buffer instead.
    let step_keys = sm::APPLY_IN_PLACE_ENTRIES * sm::KEYS_PER_ENTRY_MAX;
    sm.shared().set_flush_keys(step_keys);
    assert!(rows(vault_after(600).tables()) > sm::MERGE_IN_PLACE_KEYS as u64);
    assert!(
        rows(vault_after(610).tables()) < step_keys as u64,
        "no write-out"
    );
    apply(&mut sm, (1..=600).map(|i| entry(1, i)).collect()).await;
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(600).tables())
    );
    // Small batches after it merge in place, over it.
    apply(&mut sm, (601..=605).map(|i| entry(1, i)).collect()).await;
    apply(&mut sm, (606..=610).map(|i| entry(1, i)).collect()).await;
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(610).tables())
    );
    // And the file takes all of it.
    assert_eq!(
        sm.shared().make_durable(false).unwrap(),
        sm::Durability::Durable
    );
    assert_eq!(sm.shared().file_applied(), Some(log_id(1, 610)));
    assert_eq!(sm.shared().rows().unwrap(), rows(vault_after(610).tables()));
}

/// One batch of `n` entries through the state machine of `store`: the vault then reads
/// as each applied once, in order, and the file takes all of them.
async fn a_long_batch_applies_each_entry_once(store: Store) {
    let mut log = LogStore::new(store.clone());
    let mut sm = StateMachine::open(store.clone()).unwrap();
    let n = 3 * sm::APPLY_IN_PLACE_ENTRIES as u64 + 5;
    append(&mut log, (1..=n).map(|i| entry(1, i)).collect()).await;
    apply(&mut sm, (1..=n).map(|i| entry(1, i)).collect()).await;
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(n).tables())
    );
    assert_eq!(
        sm.shared().make_durable(false).unwrap(),
        sm::Durability::Durable
    );
    assert_eq!(sm.shared().file_applied(), Some(log_id(1, n)));
    assert_eq!(sm.shared().rows().unwrap(), rows(vault_after(n).tables()));
}

#[tokio::test]
async fn a_batch_longer_than_one_in_place_step_applies_each_entry_once_in_order() {
    // Simulated: every step in place (no time budget on a simulated host).
    let disk = SimDisk::new();
    a_long_batch_applies_each_entry_once(
        Store::open_sim(&disk, SyncPolicy::Fsync, noop_fsync()).unwrap(),
    )
    .await;
    // On threads: steps in place until the budget is spent, the rest on the pool.
    let (_dir, store, _) = counting_store();
    a_long_batch_applies_each_entry_once(store).await;
}

#[tokio::test]
async fn every_read_sees_one_applied_state_while_applies_and_flushes_go_on() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (_dir, store, _) = counting_store();
    let mut log = LogStore::new(store.clone());
    let mut sm = StateMachine::open(store.clone()).unwrap();
    let shared = sm.shared();
    // At least this many entries, one per apply; more until the reader and the flusher
    // have each run often enough alongside (a small apply is fast, done in place).
    const N: u64 = 400;
    const AT_MOST: u64 = 50_000;
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, flushes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Each entry appends one audit record: a view whose record count is not its last
    // applied index, or whose chain does not hold, saw parts of two states.
    let reader = {
        let (shared, stop, reads) = (shared.clone(), stop.clone(), reads.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let sm::View { tables, last, .. } = shared.view();
                let vault = crate::vault::Vault::new(tables);
                assert_eq!(
                    vault.audit().len(),
                    last.map_or(0, |l| l.index),
                    "a read saw parts of two applied states"
                );
                vault.validate().unwrap();
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let flusher = {
        let (shared, stop, flushes) = (shared.clone(), stop.clone(), flushes.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                shared.make_durable(true).unwrap();
                flushes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (mut appended, mut applied) = (0, 0);
    let enough = || reads.load(Ordering::Relaxed) > 10 && flushes.load(Ordering::Relaxed) > 10;
    while applied < N || (!enough() && applied < AT_MOST) {
        if applied == appended {
            append(
                &mut log,
                (appended + 1..=appended + N).map(|i| entry(1, i)).collect(),
            )
            .await;
            appended += N;
        }
        applied += 1;
        apply(&mut sm, vec![entry(1, applied)]).await;
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    flusher.join().unwrap();
    assert!(
        enough(),
        "reads {}, flushes {}",
        reads.load(Ordering::Relaxed),
        flushes.load(Ordering::Relaxed)
    );
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(applied).tables())
    );
}

#[test]
fn log_entries_are_stored_in_msgpack_and_entries_in_json_still_read() {
    let e = crate::raft_types::test_entries::tokenize(log_id(3, 42), "tok_1", 32);
    let json = encode(&e);
    let stored = encode_entry(&e);
    assert_eq!(stored[0], ENTRY_MSGPACK);
    // The ciphertext as its bytes, not hex.
    assert!(stored.windows(32).any(|w| w == [3; 32]));
    assert!(
        stored.len() * 10 < json.len() * 9,
        "{} vs {}",
        stored.len(),
        json.len()
    );
    let same = |a: &Entry, b: &Entry| assert_eq!(format!("{a:?}"), format!("{b:?}"));
    same(&decode_entry(&stored).unwrap(), &e);
    same(&decode_entry(&json).unwrap(), &e);
    // A membership entry too.
    let m = Entry {
        log_id: log_id(1, 1),
        payload: EntryPayload::Membership(openraft::Membership::new_with_defaults(
            vec![[1u64, 2, 3].into_iter().collect()],
            [],
        )),
    };
    same(&decode_entry(&encode_entry(&m)).unwrap(), &m);
    assert!(decode_entry(&[ENTRY_MSGPACK, 0xc1]).is_err());
}

/// Holds every write to a file but its first while set (a snapshot build caught after
/// its stream's first bytes).
#[derive(Default)]
struct HeldWrites {
    holding: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl HeldWrites {
    fn hold(&self, on: bool) {
        *self.holding.lock().unwrap() = on;
        self.changed.notify_all();
    }

    /// Holds writes until the guard is dropped (also when a test fails, so that its
    /// held build does not keep the runtime from shutting down).
    fn holding(self: &Arc<Self>) -> impl Drop {
        struct Release(Arc<HeldWrites>);
        impl Drop for Release {
            fn drop(&mut self) {
                self.0.hold(false);
            }
        }
        self.hold(true);
        Release(self.clone())
    }

    fn wait(&self) {
        let held = self.holding.lock().unwrap();
        drop(self.changed.wait_while(held, |h| *h).unwrap());
    }
}

struct HeldDir {
    inner: Arc<dyn wal::SegmentDir>,
    held: Arc<HeldWrites>,
}

impl wal::SegmentDir for HeldDir {
    fn list(&self) -> io::Result<Vec<u64>> {
        self.inner.list()
    }
    fn open(&self, id: u64) -> io::Result<Arc<dyn wal::SegmentFile>> {
        Ok(Arc::new(HeldFile {
            inner: self.inner.open(id)?,
            held: self.held.clone(),
            writes: std::sync::atomic::AtomicUsize::new(0),
        }))
    }
    fn open_existing(&self, id: u64) -> io::Result<Arc<dyn wal::SegmentFile>> {
        self.inner.open_existing(id)
    }
    fn remove(&self, id: u64) -> io::Result<()> {
        self.inner.remove(id)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
}

struct HeldFile {
    inner: Arc<dyn wal::SegmentFile>,
    held: Arc<HeldWrites>,
    writes: std::sync::atomic::AtomicUsize,
}

impl wal::SegmentFile for HeldFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, out)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            > 0
        {
            self.held.wait();
        }
        self.inner.write_at(offset, data)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
}

#[tokio::test]
async fn a_snapshot_being_built_is_the_one_sent_as_far_as_it_is_written() {
    let disk = SimDisk::new();
    let held = Arc::new(HeldWrites::default());
    let db = redb::Database::builder()
        .create_with_backend(disk.backend())
        .unwrap();
    let snapshot_dir: Arc<dyn wal::SegmentDir> = Arc::new(HeldDir {
        inner: disk.snapshot_dir(),
        held: held.clone(),
    });
    let store = Store::with_database(
        db,
        [disk.wal_dir(), snapshot_dir, disk.vault_dir()],
        WriterMode::Threaded,
        SyncPolicy::Fsync,
        noop_fsync(),
    )
    .unwrap();
    let mut log = LogStore::new(store.clone());
    let mut sm = StateMachine::open(store.clone()).unwrap();
    append(&mut log, (1..=4).map(|i| entry(1, i)).collect()).await;
    apply(&mut sm, (1..=2).map(|i| entry(1, i)).collect()).await;
    let mut builder = sm.get_snapshot_builder().await;
    openraft::storage::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .unwrap();
    apply(&mut sm, (3..=4).map(|i| entry(1, i)).collect()).await;

    // A build at 4 (of a file: a follower needs it), held after the first bytes of
    // its stream.
    store.want_snapshot_file();
    let holding = held.holding();
    let mut builder = sm.get_snapshot_builder().await;
    let build = tokio::spawn(async move {
        openraft::storage::RaftSnapshotBuilder::build_snapshot(&mut builder).await
    });
    let mut sending = None;
    for _ in 0..500 {
        let s = sm.get_current_snapshot().await.unwrap().unwrap();
        if s.meta.last_log_id == Some(log_id(1, 4)) {
            sending = Some(s);
            break;
        }
        assert_eq!(s.meta.last_log_id, Some(log_id(1, 2)));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let sending = sending.expect("the snapshot being built is offered to send");
    let data = sending.snapshot;
    let crate::raft_types::Built::Partly(first) = data.built() else {
        panic!("{:?}: not partly written", data.built());
    };
    assert!(first > 0, "the stream's first bytes are there");
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_millis(200),
            data.written(first + 1)
        )
        .await
        .is_err(),
        "no more is there while the build is held"
    );

    // Let the build go: what was offered reads whole, byte for byte the snapshot built.
    drop(holding);
    let (len, whole) = data.written(u64::MAX).await.unwrap();
    assert!(whole);
    let built = build.await.unwrap().unwrap();
    assert_eq!(built.meta, sending.meta);
    assert_eq!(len, built.snapshot.len());
    let (mut sent, mut kept) = (vec![0u8; len as usize], vec![0u8; len as usize]);
    data.read_at(0, &mut sent).unwrap();
    built.snapshot.read_at(0, &mut kept).unwrap();
    assert_eq!(sent, kept);
    // Recorded now, it is the current snapshot and nothing is being built.
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 4)));
    assert_eq!(current.snapshot.id(), built.snapshot.id());
    assert_eq!(store.latest_snapshot_index().unwrap(), 4);
    assert!(store.in_build().is_none());
}

/// A keyed authorisation (refused here: no such merchant), which keeps its key all the
/// same: an idempotency record made at `at_ms`.
fn keyed_open(n: u64, at_ms: u64) -> Command {
    Command::OpenPayment {
        payment_id: format!("pay_{n}"),
        merchant_id: "m".into(),
        order_id: format!("o{n}"),
        token: "tok_none".into(),
        amount: 1,
        currency: "JPY".into(),
        capture: false,
        gateway_txn_id: format!("gw_{n}"),
        route: "cafis".into(),
        idempotency: Some(crate::vault::Idempotency {
            key: format!("k{n}"),
            body_sha256: "h".into(),
        }),
        at_ms,
    }
}

fn entry_of(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(cmd),
    }
}

#[tokio::test]
async fn what_an_apply_learnt_about_idempotency_keys_is_forgotten_when_a_snapshot_replaces_the_vault(
) {
    const DAY: u64 = crate::vault::state::IDEMPOTENCY_KEEP_MS;
    // The snapshot holds a key made at 1,000.
    let mut old = crate::vault::VaultState::default();
    old.apply(&keyed_open(1, 1_000));
    assert!(old.idempotency("m", "k1").is_some());
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(1, 50)),
        last_membership: Default::default(),
    };
    let data = snapshot_stream::encode_tables(old.tables());
    // This node's vault learns that no key of its own is older than ten days.
    let (_dir, store, mut sm) = vault_with_two_entries().await;
    apply(&mut sm, vec![entry_of(3, keyed_open(2, 10 * DAY))]).await;
    sm.install_snapshot(&meta, store.snapshot_from_bytes(&data).unwrap())
        .await
        .unwrap();
    let held = |sm: &StateMachine| sm.shared().read(|v| v.idempotency("m", "k1")).unwrap();
    assert!(held(&sm).is_some());
    // A day and a moment after the snapshot's key was made, it is dropped.
    let tick = Command::RecordAdminAction {
        by: None,
        action: "tick".into(),
        detail: String::new(),
        at_ms: 1_001 + DAY,
    };
    apply(&mut sm, vec![entry_of(51, tick)]).await;
    assert!(held(&sm).is_none(), "the snapshot's old key expires");
}

/// The digest of the tables a snapshot's stream holds.
fn stream_digest(data: &crate::raft_types::SnapshotData) -> String {
    let mut restored = crate::vault::MemTables::default();
    snapshot_stream::decode(data.reader(), |t, k, v| {
        crate::vault::TablesMut::put(&mut restored, t, k, v);
        Ok(())
    })
    .unwrap();
    crate::vault::tables::digest(&restored)
}

/// The snapshot files on `disk`.
fn snapshot_files_on(disk: &SimDisk) -> Vec<u64> {
    disk.snapshot_dir().list().unwrap()
}

async fn build(sm: &mut StateMachine) -> crate::raft_types::Snapshot {
    let mut builder = sm.get_snapshot_builder().await;
    openraft::storage::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_scheduled_snapshot_is_a_mark_and_only_one_asked_for_is_a_file() {
    let disk = SimDisk::new();
    let open = |disk: &SimDisk| {
        let store = Store::open_sim(disk, SyncPolicy::Fsync, noop_fsync()).unwrap();
        let log = LogStore::new(store.clone());
        (StateMachine::open(store.clone()).unwrap(), log, store)
    };
    let (mut sm, mut log, store) = open(&disk);
    append(&mut log, (1..=6).map(|i| entry(1, i)).collect()).await;
    apply(&mut sm, (1..=3).map(|i| entry(1, i)).collect()).await;

    // For compaction: a mark, no file; the vault is durable beyond it.
    let mark = build(&mut sm).await;
    assert!(mark.snapshot.is_mark());
    assert_eq!(mark.meta.last_log_id, Some(log_id(1, 3)));
    assert_eq!(sm.shared().file_applied(), Some(log_id(1, 3)));
    assert!(snapshot_files_on(&disk).is_empty());
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert!(current.snapshot.is_mark());
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 3)));
    assert_eq!(store.snapshot_index().unwrap(), 3);
    assert_eq!(store.latest_file_snapshot_index().unwrap(), 0);

    // Asked for (a follower, a backup): a file, holding the vault as applied.
    apply(&mut sm, vec![entry(1, 4)]).await;
    store.want_snapshot_file();
    let file = build(&mut sm).await;
    assert!(!file.snapshot.is_mark());
    assert_eq!(file.meta.last_log_id, Some(log_id(1, 4)));
    assert_eq!(snapshot_files_on(&disk), vec![file.snapshot.id()]);
    assert_eq!(
        stream_digest(&file.snapshot),
        crate::vault::tables::digest(vault_after(4).tables())
    );
    assert_eq!(store.latest_file_snapshot_index().unwrap(), 4);
    // The request is taken: the next scheduled one is a mark again, and the file goes.
    apply(&mut sm, vec![entry(1, 5)]).await;
    let mark = build(&mut sm).await;
    assert!(mark.snapshot.is_mark());
    assert!(snapshot_files_on(&disk).is_empty());
    assert_eq!(store.latest_file_snapshot_index().unwrap(), 0);

    // A power cut after the mark: the vault is not behind it, so nothing is missing.
    apply(&mut sm, vec![entry(1, 6)]).await;
    disk.crash();
    drop((sm, log, store));
    let (mut sm, _log, _store) = open(&disk);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 5)));
    assert_eq!(
        served(&sm),
        crate::vault::tables::digest(vault_after(5).tables())
    );
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert!(current.snapshot.is_mark());
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 5)));
    // A mark is never installed: a vault behind one has nothing to be restored from.
    let err = sm
        .install_snapshot(&current.meta, current.snapshot)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("compaction mark"), "{err}");
}

#[tokio::test]
async fn without_fsync_every_snapshot_is_a_file() {
    // Durable commits are not durable then: the vault's file cannot stand for a
    // snapshot.
    let disk = SimDisk::new();
    let store = Store::open_sim(&disk, SyncPolicy::UnsafeNoFsync, noop_fsync()).unwrap();
    let mut log = LogStore::new(store.clone());
    let mut sm = StateMachine::open(store.clone()).unwrap();
    append(&mut log, (1..=2).map(|i| entry(1, i)).collect()).await;
    apply(&mut sm, (1..=2).map(|i| entry(1, i)).collect()).await;
    let snap = build(&mut sm).await;
    assert!(!snap.snapshot.is_mark());
    assert_eq!(snapshot_files_on(&disk), vec![snap.snapshot.id()]);
}

/// Entries 1..=n, those at `marks` comparison markers (their index as the check id).
fn entries_marked(n: u64, marks: &[u64]) -> Vec<Entry> {
    (1..=n)
        .map(|i| match marks.contains(&i) {
            true => Entry {
                log_id: log_id(1, i),
                payload: EntryPayload::Normal(Command::CompareVaults {
                    check: i,
                    at_ms: i,
                    by: None,
                }),
            },
            false => entry(1, i),
        })
        .collect()
}

/// The digest of a vault that applied `entries` one by one.
fn digest_of(entries: &[Entry]) -> String {
    let mut vault = crate::vault::VaultState::default();
    for e in entries {
        if let EntryPayload::Normal(cmd) = &e.payload {
            vault.apply(cmd);
        }
    }
    crate::vault::tables::digest(vault.tables())
}

/// Applies `entries` in one batch through the state machine of `store`, the log
/// holding them first.
async fn one_batch(store: &Store, entries: &[Entry]) -> StateMachine {
    let mut log = LogStore::new(store.clone());
    let mut sm = StateMachine::open(store.clone()).unwrap();
    append(&mut log, entries.to_vec()).await;
    apply(&mut sm, entries.to_vec()).await;
    sm
}

async fn a_marker_keeps_the_vault_as_it_stood_just_after_it(store: Store) {
    // One marker inside a batch, away from any in-place step's edge: the state kept is
    // that of entries 1..=70 exactly, however the batch was cut.
    let n = 3 * sm::APPLY_IN_PLACE_ENTRIES as u64 + 5;
    let entries = entries_marked(n, &[70]);
    let sm = one_batch(&store, &entries).await;
    assert_eq!(served(&sm), digest_of(&entries), "the whole batch applied");
    // A flush and a durable commit since do not change what the mark holds.
    sm.shared().make_durable(false).unwrap();
    let mark = sm.shared().take_mark().expect("the marker applied");
    assert_eq!((mark.check, mark.index), (70, 70));
    assert_eq!(
        crate::vault::tables::digest(&mark.tables),
        digest_of(&entries[..70])
    );
    assert_ne!(digest_of(&entries[..70]), digest_of(&entries[..71]));
    assert!(sm.shared().take_mark().is_none(), "taken once");
}

#[tokio::test]
async fn a_comparison_marker_keeps_the_vault_as_it_stood_just_after_it() {
    let disk = SimDisk::new();
    a_marker_keeps_the_vault_as_it_stood_just_after_it(
        Store::open_sim(&disk, SyncPolicy::Fsync, noop_fsync()).unwrap(),
    )
    .await;
    let (_dir, store, _) = counting_store();
    a_marker_keeps_the_vault_as_it_stood_just_after_it(store).await;
}

#[tokio::test]
async fn marks_wait_oldest_first_and_beyond_four_the_oldest_goes() {
    let (_dir, store, _) = counting_store();
    let marks = [20, 40, 60, 80, 100, 130];
    let entries = entries_marked(150, &marks);
    let sm = one_batch(&store, &entries).await;
    assert!(!sm.shared().mark_waits(20), "the oldest of six went");
    assert!(!sm.shared().mark_waits(40));
    for m in [60, 80, 100, 130] {
        assert!(sm.shared().mark_waits(m));
        let mark = sm.shared().take_mark().unwrap();
        assert_eq!((mark.check, mark.index), (m, m));
        assert_eq!(
            crate::vault::tables::digest(&mark.tables),
            digest_of(&entries[..m as usize])
        );
    }
    assert!(sm.shared().take_mark().is_none());
}

/// A data key of `bytes` bytes, installed at log index `index`.
fn big_key(index: u64, bytes: usize) -> Entry {
    entry_of(
        index,
        Command::InstallDataKey {
            by: None,
            kek_id: None,
            version: index as u32,
            wrapped: vec![index as u8; bytes],
            at_ms: index,
            by_admin: false,
        },
    )
}

/// The free space a made-up filesystem reports: the first of [`FREE`]'s values, taken
/// off while more follow; and how often it was asked ([`ASKED`]).
static FREE: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());
static ASKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn made_up_space(_: &Path) -> Option<(u64, u64)> {
    ASKED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut free = FREE.lock().unwrap();
    let now = if free.len() > 1 {
        free.remove(0)
    } else {
        free[0]
    };
    Some((now, 1 << 40))
}

fn free_space_is(values: &[u64]) -> u64 {
    *FREE.lock().unwrap() = values.to_vec();
    ASKED.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn a_snapshot_file_with_no_room_is_given_up_for_a_mark_and_not_begun_again_until_space_grows()
{
    const MIB: u64 = 1 << 20;
    const RESERVE: u64 = 64 * MIB;
    let disk = SimDisk::new();
    let store = Store::open_sim(&disk, SyncPolicy::Fsync, noop_fsync()).unwrap();
    let mut log = LogStore::new(store.clone());
    let mut sm = StateMachine::open(store.clone()).unwrap();
    // About 2.5 MiB of rows: a file of more than two room steps.
    let entries: Vec<Entry> = (1..=25).map(|i| big_key(i, 100_000)).collect();
    let mut vault = crate::vault::VaultState::default();
    for e in &entries {
        if let EntryPayload::Normal(cmd) = &e.payload {
            vault.apply(cmd);
        }
    }
    append(&mut log, entries.clone()).await;
    apply(&mut sm, entries).await;
    store.keep_room_measured_by(PathBuf::from("/made-up"), RESERVE, made_up_space);

    // Room to begin it (a step more than the reserve), for its stream's head and its
    // first frame, not for its second: the file goes, a mark stands for the snapshot,
    // and the file's waiters are told.
    free_space_is(&[
        RESERVE + 3 * MIB,
        RESERVE + 3 * MIB,
        RESERVE + 2 * MIB,
        RESERVE + MIB / 2,
    ]);
    store.want_snapshot_file();
    let snap = build(&mut sm).await;
    assert!(snap.snapshot.is_mark());
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 25)));
    assert_eq!(store.files_given_up(), 1);
    assert!(snapshot_files_on(&disk).is_empty());
    assert!(sm
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap()
        .snapshot
        .is_mark());
    assert_eq!(store.latest_file_snapshot_index().unwrap(), 0);

    // With no more room than when it was begun less what it wrote, the next file is not
    // even begun: what the last one wrote (about a step) is known to be needed.
    let asked = free_space_is(&[RESERVE + 3 * MIB / 2]);
    store.want_snapshot_file();
    assert!(build(&mut sm).await.snapshot.is_mark());
    assert_eq!(store.files_given_up(), 2);
    assert_eq!(
        ASKED.load(std::sync::atomic::Ordering::SeqCst) - asked,
        1,
        "measured once, before beginning"
    );
    assert!(snapshot_files_on(&disk).is_empty());

    // Space freed: the file is built whole, and nothing more is known to be needed.
    free_space_is(&[RESERVE + 100 * MIB]);
    store.want_snapshot_file();
    let file = build(&mut sm).await;
    assert!(!file.snapshot.is_mark());
    assert_eq!(snapshot_files_on(&disk), vec![file.snapshot.id()]);
    assert_eq!(
        stream_digest(&file.snapshot),
        crate::vault::tables::digest(vault.tables())
    );
    assert_eq!(store.files_given_up(), 2);
    free_space_is(&[RESERVE + 3 * MIB / 2]);
    assert!(store.room_for_file().is_ok());
}

#[tokio::test]
async fn without_fsync_a_snapshot_with_no_room_for_its_file_is_a_storage_error() {
    // Nothing durable can stand for the snapshot: there is no mark to fall back on.
    let disk = SimDisk::new();
    let store = Store::open_sim(&disk, SyncPolicy::UnsafeNoFsync, noop_fsync()).unwrap();
    let mut log = LogStore::new(store.clone());
    let mut sm = StateMachine::open(store.clone()).unwrap();
    append(&mut log, (1..=3).map(|i| entry(1, i)).collect()).await;
    apply(&mut sm, (1..=3).map(|i| entry(1, i)).collect()).await;
    store.keep_room_measured_by(PathBuf::from("/made-up"), 1 << 20, |_| Some((0, 1 << 40)));
    let mut builder = sm.get_snapshot_builder().await;
    let e = openraft::storage::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
    assert!(snapshot_files_on(&disk).is_empty());
    assert_eq!(store.files_given_up(), 0);
}
