import CloudAgentCore
import Foundation
import GRDB

/// The embedded `SessionStore`: one SQLite file in WAL mode, one `DatabasePool` for the life of
/// the process. Sessions are a JSON record plus the columns queries need; executions are rows
/// (a heartbeat updates one column); events are an append-only table keyed by (session, id);
/// wake-ups are a table indexed by due time.
public final class SQLiteSessionStore: SessionStore {
    private let pool: DatabasePool

    /// Opens (creating if needed) the database at `path` and runs the migrations.
    public init(path: String, busyTimeout: TimeInterval = 5) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(busyTimeout)
        configuration.foreignKeysEnabled = true
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        pool = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(pool)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("001_initial") { db in
            try db.execute(
                sql: """
                    CREATE TABLE api_tokens (
                        hash TEXT PRIMARY KEY NOT NULL,
                        owner_user TEXT NOT NULL,
                        owner_org TEXT,
                        created_at INTEGER NOT NULL
                    );
                    CREATE TABLE sessions (
                        id TEXT PRIMARY KEY NOT NULL,
                        owner_user TEXT NOT NULL,
                        owner_org TEXT NOT NULL,
                        created_at INTEGER NOT NULL,
                        runtime_state TEXT NOT NULL,
                        record TEXT NOT NULL,
                        last_event_id INTEGER NOT NULL DEFAULT 0
                    );
                    CREATE INDEX sessions_by_owner ON sessions(owner_user, owner_org, created_at DESC, id DESC);
                    CREATE INDEX sessions_by_runtime_state ON sessions(runtime_state);
                    CREATE TABLE executions (
                        id TEXT PRIMARY KEY NOT NULL,
                        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
                        status TEXT NOT NULL,
                        prompt TEXT NOT NULL,
                        mode TEXT,
                        model TEXT,
                        started_at INTEGER NOT NULL,
                        running_at INTEGER,
                        last_heartbeat INTEGER,
                        completed_at INTEGER,
                        exit_code INTEGER,
                        error TEXT,
                        interrupt_reason TEXT,
                        progress_events INTEGER NOT NULL DEFAULT 0,
                        last_event_at INTEGER,
                        stuck_reported_at INTEGER,
                        end_reported_by_runtime INTEGER NOT NULL DEFAULT 0
                    );
                    CREATE INDEX executions_by_session ON executions(session_id, id);
                    CREATE UNIQUE INDEX executions_one_active_per_session
                        ON executions(session_id) WHERE status IN ('pending', 'running');
                    CREATE TABLE events (
                        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
                        id INTEGER NOT NULL,
                        execution_id TEXT,
                        type TEXT NOT NULL,
                        at INTEGER NOT NULL,
                        data TEXT NOT NULL,
                        PRIMARY KEY (session_id, id)
                    ) WITHOUT ROWID;
                    CREATE TABLE wake_ups (
                        session_id TEXT PRIMARY KEY NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
                        due_at INTEGER NOT NULL
                    );
                    CREATE INDEX wake_ups_by_due_at ON wake_ups(due_at);
                    CREATE TABLE settings (
                        key TEXT PRIMARY KEY NOT NULL,
                        value TEXT NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("002_callbacks") { db in
            try db.execute(
                sql: """
                    CREATE TABLE callback_deliveries (
                        id TEXT PRIMARY KEY NOT NULL,
                        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
                        execution_id TEXT NOT NULL UNIQUE,
                        url TEXT NOT NULL,
                        headers TEXT NOT NULL,
                        body TEXT NOT NULL,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        next_attempt_at INTEGER NOT NULL,
                        created_at INTEGER NOT NULL,
                        last_error TEXT
                    );
                    CREATE INDEX callback_deliveries_by_due ON callback_deliveries(next_attempt_at);
                    CREATE INDEX callback_deliveries_by_session ON callback_deliveries(session_id);
                    """)
        }
        migrator.registerMigration("003_runtime_outbox") { db in
            try db.execute(
                sql: """
                    CREATE TABLE runtime_commands (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
                        kind TEXT NOT NULL,
                        execution_id TEXT,
                        command TEXT NOT NULL
                    );
                    CREATE INDEX runtime_commands_by_session ON runtime_commands(session_id, id);
                    CREATE UNIQUE INDEX runtime_commands_once_per_execution ON runtime_commands(session_id, kind, execution_id)
                        WHERE execution_id IS NOT NULL;
                    """)
        }
        migrator.registerMigration("004_input_callbacks") { db in
            // A callback per input request of an execution besides its completion's: the key is
            // (execution_id, input_request_id), '' for a completion. SQLite drops a column's
            // UNIQUE only by rebuilding the table.
            try db.execute(
                sql: """
                    CREATE TABLE callback_deliveries_new (
                        id TEXT PRIMARY KEY NOT NULL,
                        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
                        execution_id TEXT NOT NULL,
                        input_request_id TEXT NOT NULL DEFAULT '',
                        url TEXT NOT NULL,
                        headers TEXT NOT NULL,
                        body TEXT NOT NULL,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        next_attempt_at INTEGER NOT NULL,
                        created_at INTEGER NOT NULL,
                        last_error TEXT
                    );
                    INSERT INTO callback_deliveries_new (id, session_id, execution_id, url, headers, body, attempts, next_attempt_at, created_at, last_error)
                        SELECT id, session_id, execution_id, url, headers, body, attempts, next_attempt_at, created_at, last_error FROM callback_deliveries;
                    DROP TABLE callback_deliveries;
                    ALTER TABLE callback_deliveries_new RENAME TO callback_deliveries;
                    CREATE UNIQUE INDEX callback_deliveries_once ON callback_deliveries(execution_id, input_request_id);
                    CREATE INDEX callback_deliveries_by_due ON callback_deliveries(next_attempt_at);
                    CREATE INDEX callback_deliveries_by_session ON callback_deliveries(session_id);
                    """)
        }
        migrator.registerMigration("005_message_queue") { db in
            // A queued follow-up's row: when it was queued (its started_at is when its turn came).
            try db.execute(sql: "ALTER TABLE executions ADD COLUMN queued_at INTEGER")
        }
        migrator.registerMigration("006_usage") { db in
            // An execution's reported usage (JSON), and each owner's usage per day and agent,
            // which outlives the sessions (deleting one gives nothing back to a daily budget).
            try db.execute(
                sql: """
                    ALTER TABLE executions ADD COLUMN usage TEXT;
                    CREATE TABLE usage_days (
                        owner_user TEXT NOT NULL,
                        owner_org TEXT NOT NULL,
                        day TEXT NOT NULL,
                        agent TEXT NOT NULL,
                        input_tokens INTEGER NOT NULL DEFAULT 0,
                        output_tokens INTEGER NOT NULL DEFAULT 0,
                        cache_read_tokens INTEGER NOT NULL DEFAULT 0,
                        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
                        cost_usd REAL,
                        executions INTEGER NOT NULL DEFAULT 0,
                        PRIMARY KEY (owner_user, owner_org, day, agent)
                    ) WITHOUT ROWID;
                    """)
        }
        return migrator
    }

    // MARK: Tokens

    public func saveToken(hash: String, owner: Owner, createdAt: Date) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO api_tokens (hash, owner_user, owner_org, created_at) VALUES (?, ?, ?, ?)",
                arguments: [hash, owner.user, owner.org, createdAt.millisecondsSince1970]
            )
        }
    }

    public func owner(forTokenHash hash: String) async throws -> Owner? {
        try await pool.read { db in
            try Row.fetchOne(db.cachedStatement(sql: "SELECT owner_user, owner_org FROM api_tokens WHERE hash = ?"), arguments: [hash])
                .map { Owner(user: $0["owner_user"], org: $0["owner_org"]) }
        }
    }

    // MARK: Sessions

    public func insertSession(_ session: SessionRecord, wakeUp: Date?, maxOwnerRuntimes: Int?) async throws {
        let record = try RecordCoding.encode(session)
        try await pool.write { db in
            guard try Bool.fetchOne(db.cachedStatement(sql: "SELECT 1 FROM sessions WHERE id = ?"), arguments: [session.id.rawValue]) == nil else {
                throw StoreError.duplicateSession(session.id)
            }
            // One writer at a time: the count and the insert are one step.
            if let maxOwnerRuntimes, try Self.liveCount(of: session.owner, in: db) >= maxOwnerRuntimes {
                throw StoreError.quotaExceeded(maxOwnerRuntimes)
            }
            try db.execute(
                sql: """
                    INSERT INTO sessions (id, owner_user, owner_org, created_at, runtime_state, record)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    session.id.rawValue, session.owner.user, session.owner.org ?? "", session.createdAt.millisecondsSince1970,
                    session.runtime.state.rawValue, record,
                ]
            )
            if let wakeUp {
                try db.execute(sql: "INSERT INTO wake_ups (session_id, due_at) VALUES (?, ?)", arguments: [session.id.rawValue, wakeUp.millisecondsSince1970])
            }
        }
    }

    static func liveCount(of owner: Owner, in db: Database) throws -> Int {
        try Int.fetchOne(
            db.cachedStatement(
                sql: "SELECT COUNT(*) FROM sessions WHERE owner_user = ? AND owner_org = ? AND runtime_state IN ('starting', 'running')"),
            arguments: [owner.user, owner.org ?? ""]) ?? 0
    }

    public func liveSessions(of owner: Owner) async throws -> [SessionRecord] {
        try await pool.read { db in
            try String.fetchAll(
                db.cachedStatement(
                    sql: "SELECT record FROM sessions WHERE owner_user = ? AND owner_org = ? AND runtime_state IN ('starting', 'running')"),
                arguments: [owner.user, owner.org ?? ""]
            ).map { try RecordCoding.decode(SessionRecord.self, from: $0) }
        }
    }

    public func session(_ id: SessionID) async throws -> SessionRecord? {
        let record = try await pool.read { db in
            try String.fetchOne(db.cachedStatement(sql: "SELECT record FROM sessions WHERE id = ?"), arguments: [id.rawValue])
        }
        return try record.map { try RecordCoding.decode(SessionRecord.self, from: $0) }
    }

    public func sessions(owner: Owner, limit: Int, after cursor: SessionCursor?) async throws -> [SessionRecord] {
        let records = try await pool.read { db in
            if let cursor {
                let at = cursor.createdAt.millisecondsSince1970
                return try String.fetchAll(
                    db,
                    sql: """
                        SELECT record FROM sessions
                        WHERE owner_user = ? AND owner_org = ? AND (created_at < ? OR (created_at = ? AND id < ?))
                        ORDER BY created_at DESC, id DESC LIMIT ?
                        """,
                    arguments: [owner.user, owner.org ?? "", at, at, cursor.id.rawValue, limit]
                )
            }
            return try String.fetchAll(
                db,
                sql: "SELECT record FROM sessions WHERE owner_user = ? AND owner_org = ? ORDER BY created_at DESC, id DESC LIMIT ?",
                arguments: [owner.user, owner.org ?? "", limit]
            )
        }
        return try records.map { try RecordCoding.decode(SessionRecord.self, from: $0) }
    }

    public func sessions(withRuntimeIn states: Set<RuntimeState>) async throws -> [SessionRecord] {
        guard !states.isEmpty else { return [] }
        let names = states.map(\.rawValue).sorted()
        let records = try await pool.read { db in
            try String.fetchAll(
                db,
                sql: "SELECT record FROM sessions WHERE runtime_state IN (\(names.map { _ in "?" }.joined(separator: ", "))) ORDER BY id",
                arguments: StatementArguments(names)
            )
        }
        return try records.map { try RecordCoding.decode(SessionRecord.self, from: $0) }
    }

    public func deleteSession(_ id: SessionID) async throws -> Bool {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM sessions WHERE id = ?", arguments: [id.rawValue])
            return db.changesCount > 0
        }
    }

    public func commit(_ change: SessionChange) async throws -> [Event] {
        let encoded = try EncodedChange(change)
        return try await pool.write { db in
            guard
                let lastEventId = try Int64.fetchOne(
                    db.cachedStatement(sql: "SELECT last_event_id FROM sessions WHERE id = ?"), arguments: [change.sessionId.rawValue]
                )
            else {
                throw StoreError.sessionNotFound(change.sessionId)
            }
            return try Self.apply(change, encoded, lastEventId: lastEventId, in: db)
        }
    }

    /// GRDB runs `write` as one `BEGIN IMMEDIATE` transaction on the pool's one writer: the
    /// read below and the write of the decision are one atomic step.
    public func update<Output: Sendable>(
        _ id: SessionID, forRules: Bool, _ decide: @escaping @Sendable (SessionState?) throws -> Decision<Output>
    ) async throws -> Committed<Output> {
        try await pool.write { db in
            let row = try Row.fetchOne(
                db.cachedStatement(sql: "SELECT record, last_event_id FROM sessions WHERE id = ?"), arguments: [id.rawValue]
            )
            var state: SessionState?
            if let row {
                let session = try RecordCoding.decode(SessionRecord.self, from: row["record"] as String)
                var execution: Execution?
                if let active = session.activeExecutionId {
                    execution = try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM executions WHERE id = ?"), arguments: [active.rawValue])
                        .flatMap(Self.execution(from:))
                }
                if execution == nil {
                    execution = try Row.fetchOne(
                        db.cachedStatement(sql: "SELECT * FROM executions WHERE session_id = ? AND status != 'queued' ORDER BY id DESC LIMIT 1"),
                        arguments: [id.rawValue]
                    ).flatMap(Self.execution(from:))
                }
                let nextQueued =
                    forRules
                    ? try session.queue.first.flatMap { next in
                        try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM executions WHERE id = ?"), arguments: [next.rawValue])
                            .flatMap(Self.execution(from:))
                    } : nil
                let oldest =
                    forRules
                    ? try Int64.fetchOne(
                        db.cachedStatement(sql: "SELECT at FROM events WHERE session_id = ? ORDER BY id LIMIT 1"), arguments: [id.rawValue]
                    ).map { Date(millisecondsSince1970: $0) }
                    : nil
                let wakeUp =
                    forRules
                    ? try Int64.fetchOne(db.cachedStatement(sql: "SELECT due_at FROM wake_ups WHERE session_id = ?"), arguments: [id.rawValue])
                        .map { Date(millisecondsSince1970: $0) }
                    : nil
                let ownerRuntimes =
                    forRules && (session.runtime.state == .stopped || session.runtime.state == .stopping)
                    ? try Self.liveCount(of: session.owner, in: db) : nil
                state = SessionState(
                    session: session, execution: execution, oldestEventAt: oldest, wakeUp: wakeUp, nextQueued: nextQueued, ownerRuntimes: ownerRuntimes)
            }
            let decision = try decide(state)
            guard let change = decision.change else {
                return Committed(output: decision.output, effects: decision.effects, events: [], change: nil)
            }
            guard let lastEventId = row?["last_event_id"] as Int64? else { throw StoreError.sessionNotFound(change.sessionId) }
            let events = try Self.apply(change, try EncodedChange(change), lastEventId: lastEventId, in: db)
            return Committed(output: decision.output, effects: decision.effects, events: events, change: change)
        }
    }

    static func apply(_ change: SessionChange, _ encoded: EncodedChange, lastEventId: Int64, in db: Database) throws -> [Event] {
        let id = change.sessionId.rawValue
        if change.deletesSession {
            try db.execute(sql: "DELETE FROM sessions WHERE id = ?", arguments: [id])
            return change.events.enumerated().map { Event(id: lastEventId + Int64($0.offset) + 1, sessionId: change.sessionId, $0.element) }
        }
        // Cached statements: this runs for every ingested batch of runtime events.
        if let session = change.session, let sessionJSON = encoded.session {
            try db.cachedStatement(sql: "UPDATE sessions SET record = ?, runtime_state = ? WHERE id = ?")
                .execute(arguments: [sessionJSON, session.runtime.state.rawValue, id])
        }
        for execution in change.executions { try Self.save(execution, in: db) }
        for row in change.usage {
            try db.cachedStatement(
                sql: """
                    INSERT INTO usage_days (owner_user, owner_org, day, agent, input_tokens, output_tokens, cache_read_tokens,
                        cache_write_tokens, cost_usd, executions)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT(owner_user, owner_org, day, agent) DO UPDATE SET
                        input_tokens = usage_days.input_tokens + excluded.input_tokens,
                        output_tokens = usage_days.output_tokens + excluded.output_tokens,
                        cache_read_tokens = usage_days.cache_read_tokens + excluded.cache_read_tokens,
                        cache_write_tokens = usage_days.cache_write_tokens + excluded.cache_write_tokens,
                        cost_usd = CASE WHEN excluded.cost_usd IS NULL THEN usage_days.cost_usd
                            ELSE COALESCE(usage_days.cost_usd, 0) + excluded.cost_usd END,
                        executions = usage_days.executions + excluded.executions
                    """
            ).execute(arguments: [
                row.owner.user, row.owner.org ?? "", row.day, row.agent, row.usage.inputTokens, row.usage.outputTokens,
                row.usage.cacheReadTokens, row.usage.cacheWriteTokens, row.usage.costUsd, row.executions,
            ])
        }
        for cancelled in change.cancelledQueued {
            try db.cachedStatement(sql: "DELETE FROM executions WHERE id = ? AND session_id = ? AND status = 'queued'")
                .execute(arguments: [cancelled.rawValue, id])
        }
        if let new = change.newExecution {
            if new.status.isActive,
                let active = try String.fetchOne(
                    db,
                    sql: "SELECT id FROM executions WHERE session_id = ? AND status IN ('pending', 'running') AND id != ?",
                    arguments: [id, new.id.rawValue]
                ), let activeId = ExecutionID(rawValue: active)
            {
                throw StoreError.executionInProgress(activeId)
            }
            try Self.save(new, in: db)
        }
        var appended: [Event] = []
        appended.reserveCapacity(change.events.count)
        var next = lastEventId
        let insert =
            change.events.isEmpty
            ? nil : try db.cachedStatement(sql: "INSERT INTO events (session_id, id, execution_id, type, at, data) VALUES (?, ?, ?, ?, ?, ?)")
        for (event, data) in zip(change.events, encoded.eventData) {
            next += 1
            try insert?.execute(arguments: [id, next, event.executionId?.rawValue, event.type, event.at.millisecondsSince1970, data])
            appended.append(Event(id: next, sessionId: change.sessionId, event))
        }
        if next != lastEventId {
            try db.cachedStatement(sql: "UPDATE sessions SET last_event_id = ? WHERE id = ?").execute(arguments: [next, id])
        }
        switch change.wakeUp {
        case .none: break
        case .some(.none): try db.cachedStatement(sql: "DELETE FROM wake_ups WHERE session_id = ?").execute(arguments: [id])
        case .some(.some(let due)):
            try db.cachedStatement(
                sql: "INSERT INTO wake_ups (session_id, due_at) VALUES (?, ?) ON CONFLICT(session_id) DO UPDATE SET due_at = excluded.due_at"
            ).execute(arguments: [id, due.millisecondsSince1970])
        }
        for (delivery, headers) in zip(change.callbacks, encoded.callbackHeaders) { _ = try Self.insert(delivery, headers: headers, in: db) }
        if let cutoff = change.deleteEventsBefore {
            try db.execute(sql: "DELETE FROM events WHERE session_id = ? AND at < ?", arguments: [id, cutoff.millisecondsSince1970])
        }
        for drop in change.dropCommands {
            switch drop {
            case .all:
                try db.execute(sql: "DELETE FROM runtime_commands WHERE session_id = ?", arguments: [id])
            case .settings:
                try db.execute(sql: "DELETE FROM runtime_commands WHERE session_id = ? AND kind = 'settings'", arguments: [id])
            case .execution(let executionId, let kinds):
                for kind in kinds.sorted() {
                    try db.execute(
                        sql: "DELETE FROM runtime_commands WHERE session_id = ? AND execution_id = ? AND kind = ?",
                        arguments: [id, executionId.rawValue, kind]
                    )
                }
            }
        }
        for (command, json) in zip(change.commands, encoded.commands) {
            try db.cachedStatement(
                sql: "INSERT OR IGNORE INTO runtime_commands (session_id, kind, execution_id, command) VALUES (?, ?, ?, ?)"
            ).execute(arguments: [id, command.kind, command.executionId?.rawValue, json])
        }
        return appended
    }

    public func commands(of session: SessionID, after id: Int64) async throws -> [QueuedCommand] {
        try await pool.read { db in
            try Row.fetchAll(
                db.cachedStatement(sql: "SELECT id, command FROM runtime_commands WHERE session_id = ? AND id > ? ORDER BY id"),
                arguments: [session.rawValue, id]
            ).map { row in
                QueuedCommand(id: row["id"], sessionId: session, command: try RecordCoding.decode(OutboxCommand.self, from: row["command"] as String))
            }
        }
    }

    // MARK: Executions

    static func save(_ execution: Execution, in db: Database) throws {
        try db.cachedStatement(
            sql: """
                INSERT INTO executions (id, session_id, status, prompt, mode, model, started_at, running_at, last_heartbeat,
                    completed_at, exit_code, error, interrupt_reason, progress_events, last_event_at, stuck_reported_at,
                    end_reported_by_runtime, queued_at, usage)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET status = excluded.status, started_at = excluded.started_at, running_at = excluded.running_at,
                    last_heartbeat = MAX(COALESCE(executions.last_heartbeat, excluded.last_heartbeat),
                        COALESCE(excluded.last_heartbeat, executions.last_heartbeat)),
                    completed_at = excluded.completed_at, exit_code = excluded.exit_code, error = excluded.error,
                    interrupt_reason = excluded.interrupt_reason, progress_events = excluded.progress_events,
                    last_event_at = excluded.last_event_at, stuck_reported_at = excluded.stuck_reported_at,
                    end_reported_by_runtime = excluded.end_reported_by_runtime, usage = excluded.usage
                """
        ).execute(arguments: [
            execution.id.rawValue, execution.sessionId.rawValue, execution.status.rawValue, execution.prompt,
            execution.mode, execution.model, execution.startedAt.millisecondsSince1970,
            execution.runningAt?.millisecondsSince1970, execution.lastHeartbeat?.millisecondsSince1970,
            execution.completedAt?.millisecondsSince1970, execution.exitCode, execution.error,
            execution.interruptReason, execution.progressEvents, execution.lastEventAt?.millisecondsSince1970,
            execution.stuckReportedAt?.millisecondsSince1970, execution.endReportedByRuntime, execution.queuedAt?.millisecondsSince1970,
            try execution.usage.map { try RecordCoding.encode($0) },
        ])
    }

    static func execution(from row: Row) -> Execution? {
        guard let id = ExecutionID(rawValue: row["id"]), let sessionId = SessionID(rawValue: row["session_id"]),
            let status = ExecutionStatus(rawValue: row["status"])
        else { return nil }
        func date(_ column: String) -> Date? { (row[column] as Int64?).map { Date(millisecondsSince1970: $0) } }
        var execution = Execution(
            id: id, sessionId: sessionId, prompt: row["prompt"], mode: row["mode"], model: row["model"],
            acceptedAt: Date(millisecondsSince1970: row["started_at"])
        )
        execution.status = status
        execution.runningAt = date("running_at")
        execution.lastHeartbeat = date("last_heartbeat")
        execution.completedAt = date("completed_at")
        execution.exitCode = row["exit_code"]
        execution.error = row["error"]
        execution.interruptReason = row["interrupt_reason"]
        execution.progressEvents = row["progress_events"]
        execution.lastEventAt = date("last_event_at")
        execution.stuckReportedAt = date("stuck_reported_at")
        execution.endReportedByRuntime = row["end_reported_by_runtime"]
        execution.queuedAt = date("queued_at")
        execution.usage = (row["usage"] as String?).flatMap { try? RecordCoding.decode(Usage.self, from: $0) }
        return execution
    }

    public func execution(_ id: ExecutionID) async throws -> Execution? {
        try await pool.read { db in
            try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM executions WHERE id = ?"), arguments: [id.rawValue]).flatMap(Self.execution(from:))
        }
    }

    public func executions(of session: SessionID) async throws -> [Execution] {
        try await pool.read { db in
            try Row.fetchAll(db.cachedStatement(sql: "SELECT * FROM executions WHERE session_id = ? ORDER BY id"), arguments: [session.rawValue])
                .compactMap(Self.execution(from:))
        }
    }

    public func latestExecution(of session: SessionID) async throws -> Execution? {
        try await pool.read { db in
            try Row.fetchOne(
                db.cachedStatement(sql: "SELECT * FROM executions WHERE session_id = ? AND status != 'queued' ORDER BY id DESC LIMIT 1"),
                arguments: [session.rawValue]
            )
            .flatMap(Self.execution(from:))
        }
    }

    public func usage(of owner: Owner, from: String, to: String) async throws -> [UsageDay] {
        try await pool.read { db in
            try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT * FROM usage_days WHERE owner_user = ? AND owner_org = ? AND day >= ? AND day <= ? ORDER BY day, agent
                        """), arguments: [owner.user, owner.org ?? "", from, to]
            ).map { row in
                UsageDay(
                    owner: owner, day: row["day"], agent: row["agent"],
                    usage: Usage(
                        inputTokens: row["input_tokens"], outputTokens: row["output_tokens"], cacheReadTokens: row["cache_read_tokens"],
                        cacheWriteTokens: row["cache_write_tokens"], costUsd: row["cost_usd"]), executions: row["executions"])
            }
        }
    }

    public func recordHeartbeats(_ heartbeats: [Heartbeat]) async throws -> Int {
        guard !heartbeats.isEmpty else { return 0 }
        return try await pool.write { db in
            let statement = try db.cachedStatement(
                sql: "UPDATE executions SET last_heartbeat = ? WHERE id = ? AND status = 'running' AND COALESCE(last_heartbeat, 0) < ?"
            )
            var changed = 0
            for beat in heartbeats {
                let at = beat.at.millisecondsSince1970
                try statement.execute(arguments: [at, beat.executionId.rawValue, at])
                changed += db.changesCount
            }
            return changed
        }
    }

    // MARK: Events

    public func events(of session: SessionID, _ query: EventQuery) async throws -> [Event] {
        var sql = "SELECT id, execution_id, type, at, data FROM events WHERE session_id = ? AND id > ?"
        var values: [DatabaseValue] = [session.rawValue.databaseValue, query.afterId.databaseValue]
        if let executionId = query.executionId {
            sql += " AND execution_id = ?"
            values.append(executionId.rawValue.databaseValue)
        }
        if let types = query.types {
            sql += " AND type IN (\(Array(repeating: "?", count: types.count).joined(separator: ", ")))"
            values += types.sorted().map(\.databaseValue)
        }
        sql += " ORDER BY id LIMIT ?"
        values.append(query.limit.databaseValue)
        let (statement, bindings) = (sql, values)
        return try await pool.read { db in
            try Row.fetchAll(db, sql: statement, arguments: StatementArguments(bindings)).map { row in
                Event(
                    id: row["id"], sessionId: session,
                    executionId: (row["execution_id"] as String?).flatMap(ExecutionID.init(rawValue:)),
                    type: row["type"], at: Date(millisecondsSince1970: row["at"]),
                    data: try RecordCoding.decode([String: JSONValue].self, from: row["data"])
                )
            }
        }
    }

    public func lastEventId(of session: SessionID) async throws -> Int64 {
        try await pool.read { db in
            try Int64.fetchOne(db.cachedStatement(sql: "SELECT last_event_id FROM sessions WHERE id = ?"), arguments: [session.rawValue]) ?? 0
        }
    }

    public func oldestEventAt(of session: SessionID) async throws -> Date? {
        // Events are appended in time order, so the lowest id is the oldest.
        try await pool.read { db in
            try Int64.fetchOne(db.cachedStatement(sql: "SELECT at FROM events WHERE session_id = ? ORDER BY id LIMIT 1"), arguments: [session.rawValue])
                .map { Date(millisecondsSince1970: $0) }
        }
    }

    public func deleteEvents(of session: SessionID, olderThan date: Date) async throws -> Int {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM events WHERE session_id = ? AND at < ?", arguments: [session.rawValue, date.millisecondsSince1970])
            return db.changesCount
        }
    }

    // MARK: Wake-ups and settings

    public func wakeUps() async throws -> [WakeUp] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT session_id, due_at FROM wake_ups ORDER BY due_at").compactMap { row in
                SessionID(rawValue: row["session_id"]).map { WakeUp(sessionId: $0, dueAt: Date(millisecondsSince1970: row["due_at"])) }
            }
        }
    }

    public func claimWakeUps(dueBefore horizon: Date, now: Date, node: String, leaseMs: Int64, limit: Int) async throws -> [WakeUp] {
        try await pool.read { db in
            try Row.fetchAll(
                db.cachedStatement(sql: "SELECT session_id, due_at FROM wake_ups WHERE due_at < ? ORDER BY due_at LIMIT ?"),
                arguments: [horizon.millisecondsSince1970, limit]
            ).compactMap { row in
                SessionID(rawValue: row["session_id"]).map { WakeUp(sessionId: $0, dueAt: Date(millisecondsSince1970: row["due_at"])) }
            }
        }
    }

    public func wakeUp(of session: SessionID) async throws -> Date? {
        try await pool.read { db in
            try Int64.fetchOne(db.cachedStatement(sql: "SELECT due_at FROM wake_ups WHERE session_id = ?"), arguments: [session.rawValue])
                .map { Date(millisecondsSince1970: $0) }
        }
    }

    public func settingSavingIfAbsent(_ key: String, value: String) async throws -> String {
        try await pool.write { db in
            try db.execute(sql: "INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", arguments: [key, value])
            return try String.fetchOne(db, sql: "SELECT value FROM settings WHERE key = ?", arguments: [key]) ?? value
        }
    }

    // MARK: Callbacks

    @discardableResult
    public func enqueueCallback(_ delivery: CallbackDelivery) async throws -> Bool {
        let headers = try RecordCoding.encode(delivery.headers)
        return try await pool.write { db in
            guard try Bool.fetchOne(db.cachedStatement(sql: "SELECT 1 FROM sessions WHERE id = ?"), arguments: [delivery.sessionId.rawValue]) != nil else {
                throw StoreError.sessionNotFound(delivery.sessionId)
            }
            return try Self.insert(delivery, headers: headers, in: db)
        }
    }

    /// One delivery into the outbox; false when its execution (and input request) has one already.
    static func insert(_ delivery: CallbackDelivery, headers: String, in db: Database) throws -> Bool {
        try db.cachedStatement(
            sql: """
                INSERT INTO callback_deliveries (id, session_id, execution_id, input_request_id, url, headers, body, attempts, next_attempt_at,
                    created_at, last_error)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(execution_id, input_request_id) DO NOTHING
                """
        ).execute(arguments: [
            delivery.id.uuidString.lowercased(), delivery.sessionId.rawValue, delivery.executionId.rawValue, delivery.requestId ?? "", delivery.url,
            headers, delivery.body, delivery.attempts, delivery.nextAttemptAt.millisecondsSince1970,
            delivery.createdAt.millisecondsSince1970, delivery.lastError,
        ])
        return db.changesCount > 0
    }

    public func dueCallbacks(before date: Date, limit: Int) async throws -> [CallbackDelivery] {
        try await pool.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT * FROM callback_deliveries WHERE next_attempt_at <= ? ORDER BY next_attempt_at, created_at, id LIMIT ?",
                arguments: [date.millisecondsSince1970, limit]
            ).compactMap(Self.callbackDelivery(from:))
        }
    }

    static func callbackDelivery(from row: Row) throws -> CallbackDelivery? {
        guard let id = UUID(uuidString: row["id"]), let sessionId = SessionID(rawValue: row["session_id"]),
            let executionId = ExecutionID(rawValue: row["execution_id"])
        else { return nil }
        return CallbackDelivery(
            id: id, sessionId: sessionId, executionId: executionId, url: row["url"],
            headers: try RecordCoding.decode([String: SealedValue].self, from: row["headers"]), body: row["body"],
            attempts: row["attempts"], nextAttemptAt: Date(millisecondsSince1970: row["next_attempt_at"]),
            createdAt: Date(millisecondsSince1970: row["created_at"]), lastError: row["last_error"],
            requestId: (row["input_request_id"] as String?).flatMap { $0.isEmpty ? nil : $0 }
        )
    }

    public func nextCallbackDue() async throws -> Date? {
        try await pool.read { db in
            try Int64.fetchOne(db.cachedStatement(sql: "SELECT MIN(next_attempt_at) FROM callback_deliveries")).map { Date(millisecondsSince1970: $0) }
        }
    }

    @discardableResult
    public func markCallbackDelivered(_ id: UUID) async throws -> Bool { try await deleteCallback(id) }

    public func rescheduleCallback(_ id: UUID, nextAttemptAt: Date, lastError: String) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "UPDATE callback_deliveries SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
                arguments: [nextAttemptAt.millisecondsSince1970, lastError, id.uuidString.lowercased()]
            )
        }
    }

    @discardableResult
    public func markCallbackFailed(_ id: UUID) async throws -> Bool { try await deleteCallback(id) }

    private func deleteCallback(_ id: UUID) async throws -> Bool {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM callback_deliveries WHERE id = ?", arguments: [id.uuidString.lowercased()])
            return db.changesCount > 0
        }
    }
}
