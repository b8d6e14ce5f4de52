import CloudAgentCore
import CloudAgentPostgres
import CloudAgentSQLite
import Foundation
import Logging
import NIOCore
import PostgresNIO

/// Dormant sessions for `scale`: stopped by the idle rule weeks ago, one completed execution
/// with its six events, and the durable wake-up the rules give them (TTL or event retention,
/// far in the future). Built from the domain's own types and rules; written through the SQLite
/// store, or on PostgreSQL by COPY straight into the store's tables, with the rows the store
/// writes (the record by `RecordCoding`, event data by `JSONText`, as `EncodedChange` does).
enum DormantSessions {
    /// One dormant session, as the store would hold it.
    struct Dormant {
        var session: SessionRecord
        var execution: Execution
        var events: [NewEvent]
        var wakeUp: Date?
    }

    static func make(_ index: Int, timing: Timing, now: Date) throws -> Dormant {
        let created = now.adding(milliseconds: -Int64.random(in: 3_600_000...(30 * 86_400_000)))
        let started = created.adding(milliseconds: 1200)
        let completed = started.adding(milliseconds: Int64.random(in: 5_000...600_000))
        let stopped = completed.adding(milliseconds: timing.idleTimeoutMs + 40)
        let id = SessionID()
        let prompt = "dormant session \(index): summarize the repository and open a pull request"
        var session = SessionRecord(id: id, owner: .local, createdAt: created, spec: SessionSpec(prompt: prompt), workBranch: "session/\(id.rawValue)")
        session.initiatedAt = created
        session.executionCount = 1
        session.updatedAt = stopped
        let reason = StopReason(
            rule: .idle, at: stopped, lastActivityAt: completed, idleMs: stopped.milliseconds(since: completed),
            idleTimeoutMs: timing.idleTimeoutMs, detail: "no activity for \(stopped.milliseconds(since: completed)) ms (since executionEnd)"
        )
        session.runtime = .stopped(RuntimeStatus.Stopped(startedAt: started, requestedAt: created, stoppedAt: stopped, stopReason: reason))
        var execution = Execution(id: ExecutionID(at: created), sessionId: id, prompt: prompt, acceptedAt: created)
        try execution.markRunning(at: started.adding(milliseconds: 30))
        execution.recordProgress(at: completed, events: 1)
        try execution.end(.completed, at: completed, exitCode: 0, reportedByRuntime: true)
        let events = [
            NewEvent(executionId: execution.id, type: EventType.executionStarted, at: created, data: ["prompt": .string(prompt), "followUp": false]),
            NewEvent(type: EventType.runtimeStarted, at: started, data: ["cold": false]),
            NewEvent(executionId: execution.id, type: EventType.executionRunning, at: started.adding(milliseconds: 30)),
            NewEvent(executionId: execution.id, type: EventType.agent, at: completed, data: ["kind": "text", "text": "done: opened the pull request"]),
            NewEvent(executionId: execution.id, type: EventType.executionCompleted, at: completed, data: ["exitCode": 0]),
            NewEvent(
                type: EventType.runtimeStopped, at: stopped,
                data: [
                    "rule": "idle", "lastActivityAt": JSONValue(completed), "idleMs": JSONValue(reason.idleMs),
                    "idleTimeoutMs": JSONValue(timing.idleTimeoutMs),
                ]),
        ]
        let wakeUp = SessionRules.evaluate(
            SessionSnapshot(session: session, latestExecution: execution, oldestEventAt: created), timing: timing, controlPlaneStartedAt: now, now: now
        ).nextWakeUp
        return Dormant(session: session, execution: execution, events: events, wakeUp: wakeUp)
    }

    // MARK: SQLite, through the store

    static func insert(_ count: Int, path: String) async throws -> [SessionID] {
        let store = try SQLiteSessionStore(path: path)
        let timing = Timing()
        return try await withThrowingTaskGroup(of: [SessionID].self) { group in
            let workers = 8
            for worker in 0..<workers {
                group.addTask {
                    var ids: [SessionID] = []
                    for index in stride(from: worker, to: count, by: workers) {
                        let dormant = try make(index, timing: timing, now: Date().truncatedToMilliseconds)
                        try await store.insertSession(dormant.session)
                        _ = try await store.commit(
                            SessionChange(
                                sessionId: dormant.session.id, newExecution: dormant.execution, events: dormant.events, wakeUp: .some(dormant.wakeUp)
                            ))
                        ids.append(dormant.session.id)
                    }
                    return ids
                }
            }
            var all: [SessionID] = []
            for try await ids in group { all += ids }
            return all
        }
    }

    // MARK: PostgreSQL, by COPY

    /// Sessions per batch: each batch is four COPYs (sessions, executions, events, wake-ups).
    static let batch = 5_000

    /// Writes `count` dormant sessions into a migrated database, `workers` batches at a time, each
    /// on a connection of its own; returns `sample` of their ids, picked at random.
    static func copy(_ count: Int, into database: PostgresConfiguration, workers: Int = 2, sample: Int = 10_000) async throws -> [SessionID] {
        let timing = Timing()
        let logger = PostgresServer.logger
        let batches = (count + batch - 1) / batch
        let keep = Double(sample) / Double(max(1, count))
        return try await withPostgresClient(database) { client in
            try await withThrowingTaskGroup(of: [SessionID].self) { group in
                for worker in 0..<workers {
                    group.addTask {
                        var kept: [SessionID] = []
                        for batchIndex in stride(from: worker, to: batches, by: workers) {
                            let range = (batchIndex * batch)..<min(count, (batchIndex + 1) * batch)
                            let now = Date().truncatedToMilliseconds
                            let sessions = try range.map { try make($0, timing: timing, now: now) }
                            let rows = try Rows(sessions)
                            try await client.withConnection { connection in
                                try await connection.copy(
                                    rows.sessions, into: "sessions",
                                    ["id", "owner_user", "owner_org", "created_at", "runtime_state", "record", "last_event_id"], logger)
                                try await connection.copy(rows.executions, into: "executions", Rows.executionColumns, logger)
                                try await connection.copy(rows.events, into: "events", ["session_id", "id", "execution_id", "type", "at", "data"], logger)
                                try await connection.copy(rows.wakeUps, into: "wake_ups", ["session_id", "due_at"], logger)
                            }
                            kept += sessions.lazy.map(\.session.id).filter { _ in Double.random(in: 0..<1) < keep }
                        }
                        return kept
                    }
                }
                var all: [SessionID] = []
                for try await ids in group { all += ids }
                // Statistics for the planner, as autovacuum would have gathered on a live database.
                _ = try await client.query("ANALYZE", logger: logger).collect()
                return all
            }
        }
    }

    /// A batch's rows in COPY's text format: tab-separated, `\N` for NULL, one line per row.
    struct Rows {
        var sessions = ByteBuffer(), executions = ByteBuffer(), events = ByteBuffer(), wakeUps = ByteBuffer()

        static let executionColumns = [
            "id", "session_id", "status", "prompt", "mode", "model", "started_at", "running_at", "last_heartbeat", "completed_at",
            "exit_code", "error", "interrupt_reason", "progress_events", "last_event_at", "stuck_reported_at", "end_reported_by_runtime",
        ]

        init(_ batch: [Dormant]) throws {
            for dormant in batch {
                let session = dormant.session, execution = dormant.execution, id = session.id.rawValue
                Self.line(
                    &sessions,
                    [
                        id, session.owner.user, session.owner.org ?? "", String(session.createdAt.millisecondsSince1970), session.runtime.state.rawValue,
                        try RecordCoding.encode(session), String(dormant.events.count),
                    ])
                func millis(_ date: Date?) -> String? { date.map { String($0.millisecondsSince1970) } }
                Self.line(
                    &executions,
                    [
                        execution.id.rawValue, id, execution.status.rawValue, execution.prompt, execution.mode, execution.model,
                        String(execution.startedAt.millisecondsSince1970), millis(execution.runningAt), millis(execution.lastHeartbeat),
                        millis(execution.completedAt), execution.exitCode.map(String.init), execution.error, execution.interruptReason,
                        String(execution.progressEvents), millis(execution.lastEventAt), millis(execution.stuckReportedAt),
                        execution.endReportedByRuntime ? "t" : "f",
                    ])
                for (offset, event) in dormant.events.enumerated() {
                    Self.line(
                        &events,
                        [
                            id, String(offset + 1), event.executionId?.rawValue, event.type, String(event.at.millisecondsSince1970),
                            JSONText.encode(event.data),
                        ])
                }
                if let wakeUp = dormant.wakeUp { Self.line(&wakeUps, [id, String(wakeUp.millisecondsSince1970)]) }
            }
        }

        private static func isSpecial(_ byte: UInt8) -> Bool {
            byte == UInt8(ascii: "\\") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r")
        }

        /// One row; a field with none of COPY's special bytes (backslash, tab, newline, return)
        /// is copied as it is, the others byte by byte with those escaped.
        private static func line(_ out: inout ByteBuffer, _ fields: [String?]) {
            for (index, field) in fields.enumerated() {
                if index > 0 { out.writeInteger(UInt8(ascii: "\t")) }
                guard let field else {
                    out.writeStaticString("\\N")
                    continue
                }
                guard field.utf8.contains(where: isSpecial) else {
                    out.writeString(field)
                    continue
                }
                for byte in field.utf8 {
                    switch byte {
                    case UInt8(ascii: "\\"): out.writeStaticString("\\\\")
                    case UInt8(ascii: "\t"): out.writeStaticString("\\t")
                    case UInt8(ascii: "\n"): out.writeStaticString("\\n")
                    case UInt8(ascii: "\r"): out.writeStaticString("\\r")
                    default: out.writeInteger(byte)
                    }
                }
            }
            out.writeInteger(UInt8(ascii: "\n"))
        }
    }
}

extension PostgresConnection {
    /// COPY … FROM STDIN of rows already in text format.
    fileprivate func copy(_ rows: ByteBuffer, into table: String, _ columns: [String], _ logger: Logger) async throws {
        guard rows.readableBytes > 0 else { return }
        try await copyFrom(table: table, columns: columns, logger: logger) { writer in try await writer.write(rows) }
    }
}
