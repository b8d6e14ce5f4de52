import PostgresNIO

/// The PostgreSQL schema, in numbered migrations: the same tables, columns and rules as the
/// SQLite store's migrations 001–003, then what only several nodes need (4: the node registry
/// and the claims on wake-ups and callback deliveries). Times are BIGINT milliseconds since 1970; the session
/// record, event data and outbox commands are JSON text, kept byte for byte. Ids are compared
/// with the "C" collation, so that lists sort as the SQLite store and the API's cursors do
/// (byte order), whatever the database's default collation is.
enum PostgresMigrations {
    struct Migration {
        var version: Int
        var name: String
        /// One statement each: the extended query protocol takes one statement per query.
        var statements: [String]
    }

    /// Held with `pg_advisory_xact_lock` while migrating, so that nodes starting at once apply
    /// each migration once: the first migrates, the others wait and then find nothing to do.
    static let advisoryLockKey: Int64 = 0x636c_6f75_6461_6774  // "cloudagt"

    static let all: [Migration] = [
        Migration(
            version: 1, name: "initial",
            statements: [
                """
                CREATE TABLE api_tokens (
                    hash TEXT PRIMARY KEY,
                    owner_user TEXT NOT NULL,
                    owner_org TEXT,
                    created_at BIGINT NOT NULL
                )
                """,
                """
                CREATE TABLE sessions (
                    id TEXT COLLATE "C" PRIMARY KEY,
                    owner_user TEXT NOT NULL,
                    owner_org TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    runtime_state TEXT NOT NULL,
                    record TEXT NOT NULL,
                    last_event_id BIGINT NOT NULL DEFAULT 0
                )
                """,
                "CREATE INDEX sessions_by_owner ON sessions (owner_user, owner_org, created_at DESC, id DESC)",
                "CREATE INDEX sessions_by_runtime_state ON sessions (runtime_state)",
                """
                CREATE TABLE executions (
                    id TEXT COLLATE "C" PRIMARY KEY,
                    session_id TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                    status TEXT NOT NULL,
                    prompt TEXT NOT NULL,
                    mode TEXT,
                    model TEXT,
                    started_at BIGINT NOT NULL,
                    running_at BIGINT,
                    last_heartbeat BIGINT,
                    completed_at BIGINT,
                    exit_code BIGINT,
                    error TEXT,
                    interrupt_reason TEXT,
                    progress_events BIGINT NOT NULL DEFAULT 0,
                    last_event_at BIGINT,
                    stuck_reported_at BIGINT,
                    end_reported_by_runtime BOOLEAN NOT NULL DEFAULT FALSE
                )
                """,
                "CREATE INDEX executions_by_session ON executions (session_id, id)",
                """
                CREATE UNIQUE INDEX executions_one_active_per_session
                    ON executions (session_id) WHERE status IN ('pending', 'running')
                """,
                """
                CREATE TABLE events (
                    session_id TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                    id BIGINT NOT NULL,
                    execution_id TEXT COLLATE "C",
                    type TEXT NOT NULL,
                    at BIGINT NOT NULL,
                    data TEXT NOT NULL,
                    PRIMARY KEY (session_id, id)
                )
                """,
                """
                CREATE TABLE wake_ups (
                    session_id TEXT COLLATE "C" PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
                    due_at BIGINT NOT NULL
                )
                """,
                "CREATE INDEX wake_ups_by_due_at ON wake_ups (due_at)",
                """
                CREATE TABLE settings (
                    key TEXT PRIMARY KEY,
                    value TEXT NOT NULL
                )
                """,
            ]),
        Migration(
            version: 2, name: "callbacks",
            statements: [
                """
                CREATE TABLE callback_deliveries (
                    id TEXT COLLATE "C" PRIMARY KEY,
                    session_id TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                    execution_id TEXT COLLATE "C" NOT NULL UNIQUE,
                    url TEXT NOT NULL,
                    headers TEXT NOT NULL,
                    body TEXT NOT NULL,
                    attempts BIGINT NOT NULL DEFAULT 0,
                    next_attempt_at BIGINT NOT NULL,
                    created_at BIGINT NOT NULL,
                    last_error TEXT
                )
                """,
                "CREATE INDEX callback_deliveries_by_due ON callback_deliveries (next_attempt_at)",
                "CREATE INDEX callback_deliveries_by_session ON callback_deliveries (session_id)",
            ]),
        Migration(
            version: 3, name: "runtime_outbox",
            statements: [
                // Every write to a session's rows holds its session row (FOR UPDATE), so a session's
                // outbox ids rise in commit order even though the sequence is shared.
                """
                CREATE TABLE runtime_commands (
                    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    session_id TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                    kind TEXT NOT NULL,
                    execution_id TEXT COLLATE "C",
                    command TEXT NOT NULL
                )
                """,
                "CREATE INDEX runtime_commands_by_session ON runtime_commands (session_id, id)",
                """
                CREATE UNIQUE INDEX runtime_commands_once_per_execution ON runtime_commands (session_id, kind, execution_id)
                    WHERE execution_id IS NOT NULL
                """,
            ]),
        Migration(
            version: 4, name: "cluster",
            statements: [
                // The registry of the nodes sharing the database (PostgresCluster): each renews its
                // heartbeat; `taken_over` makes the takeover of a lost node's sessions happen once.
                """
                CREATE TABLE nodes (
                    id TEXT COLLATE "C" PRIMARY KEY,
                    advertise_url TEXT NOT NULL,
                    started_at BIGINT NOT NULL,
                    heartbeat_at BIGINT NOT NULL,
                    taken_over BOOLEAN NOT NULL DEFAULT FALSE
                )
                """,
                // Leases: a wake-up or a callback delivery claimed by a node until `claim_until`, so
                // that two nodes do not both arm or deliver it, and a dead node's claims lapse.
                "ALTER TABLE wake_ups ADD COLUMN claimed_by TEXT, ADD COLUMN claim_until BIGINT",
                "ALTER TABLE callback_deliveries ADD COLUMN claimed_by TEXT, ADD COLUMN claim_until BIGINT",
            ]),
        Migration(
            version: 5, name: "input_callbacks",
            statements: [
                // A callback per input request of an execution besides its completion's: the key is
                // (execution_id, input_request_id), '' for a completion.
                "ALTER TABLE callback_deliveries ADD COLUMN input_request_id TEXT COLLATE \"C\" NOT NULL DEFAULT ''",
                "ALTER TABLE callback_deliveries DROP CONSTRAINT callback_deliveries_execution_id_key",
                "CREATE UNIQUE INDEX callback_deliveries_once ON callback_deliveries (execution_id, input_request_id)",
            ]),
        Migration(
            version: 6, name: "message_queue",
            statements: [
                // A queued follow-up's row: when it was queued (its started_at is when its turn came).
                "ALTER TABLE executions ADD COLUMN queued_at BIGINT"
            ]),
        Migration(
            version: 7, name: "usage",
            statements: [
                // An execution's reported usage (JSON), and each owner's usage per day and agent,
                // which outlives the sessions (deleting one gives nothing back to a daily budget).
                "ALTER TABLE executions ADD COLUMN usage TEXT",
                """
                CREATE TABLE usage_days (
                    owner_user TEXT COLLATE "C" NOT NULL,
                    owner_org TEXT COLLATE "C" NOT NULL,
                    day TEXT COLLATE "C" NOT NULL,
                    agent TEXT COLLATE "C" NOT NULL,
                    input_tokens BIGINT NOT NULL DEFAULT 0,
                    output_tokens BIGINT NOT NULL DEFAULT 0,
                    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
                    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
                    cost_usd DOUBLE PRECISION,
                    executions BIGINT NOT NULL DEFAULT 0,
                    PRIMARY KEY (owner_user, owner_org, day, agent)
                )
                """,
            ]),
    ]
}
