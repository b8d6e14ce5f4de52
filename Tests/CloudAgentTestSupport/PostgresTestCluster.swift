import CloudAgentPostgres
import Foundation
import Logging
import PostgresNIO
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A throwaway PostgreSQL cluster for the tests (the store's, and the server's with several nodes): `initdb` in a fresh temporary directory,
/// one `postgres` on a free loopback port (trust auth, no fsync), one database per test. It is
/// started once per test process, when the first test asks for a database, and stopped
/// (`pg_ctl stop -m immediate`) and removed when the process exits. The system's cluster is never
/// touched.
///
/// PostgreSQL refuses to run as root, so under root (as CI runs) every server command runs as
/// the `postgres` OS user through `runuser`, in a directory owned by it.
///
/// The server runs under a small shell that stops it when its standard input — a pipe whose
/// other end only this process holds — closes: at exit, and also when the test process
/// crashes, so that no server outlives the tests.
public actor PostgresTestCluster {
    public static let shared = PostgresTestCluster()

    /// A running cluster.
    struct Running: Sendable {
        var directory: String
        var dataDirectory: String
        var port: Int
        var binaries: String
        var runAsPostgres: Bool
        /// The shell that runs the server (reaped at exit).
        var serverPid: pid_t
        /// This process's end of the server's lifeline.
        var lifeline: Int32
    }

    /// Why the cluster could not be had. PostgreSQL missing is a failure, not a skip: CI
    /// installs it, so a missing server means a broken setup.
    public struct Unavailable: Error, CustomStringConvertible {
        public var description: String
    }

    static let superuser = "postgres"
    private static let logger = Logger(label: "cloud-agent.tests.postgres", factory: { _ in SwiftLogNoOpLogHandler() })
    /// What the exit handler stops; set once the server is up.
    private static let atExit = Mutex<Running?>(nil)

    private var startup: Task<Running, any Error>?

    /// A new, empty database in the shared cluster, and the configuration to reach it.
    public func createDatabase() async throws -> PostgresConfiguration {
        let running = try await start()
        let name = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        try await Self.withAdminConnection(port: running.port) { connection in
            _ = try await connection.query("CREATE DATABASE \(unescaped: name)", logger: Self.logger).collect()
        }
        return PostgresConfiguration(host: "127.0.0.1", port: running.port, username: Self.superuser, password: nil, database: name)
    }

    /// Drops a test's database (closing whatever connections are left to it).
    public func dropDatabase(_ name: String) async throws {
        let running = try await start()
        try await Self.withAdminConnection(port: running.port) { connection in
            _ = try await connection.query("DROP DATABASE IF EXISTS \(unescaped: name) WITH (FORCE)", logger: Self.logger).collect()
        }
    }

    private func start() async throws -> Running {
        if let startup { return try await startup.value }
        let task = Task { try await Self.launch() }
        startup = task
        return try await task.value
    }

    private static func withAdminConnection(port: Int, _ body: (PostgresConnection) async throws -> Void) async throws {
        let configuration = PostgresConnection.Configuration(
            host: "127.0.0.1", port: port, username: superuser, password: nil, database: "postgres", tls: .disable
        )
        let connection = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: logger)
        do {
            try await body(connection)
        } catch {
            try? await connection.close()
            throw error
        }
        try await connection.close()
    }

    // MARK: Starting

    private static func launch() async throws -> Running {
        let binaries = try findBinaries()
        let runAsPostgres = getuid() == 0
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cloud-agent-pg-\(UUID().uuidString)").path
        let data = directory + "/data"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        do {
            if runAsPostgres {
                guard let user = getpwnam(superuser) else {
                    throw Unavailable(description: "PostgreSQL cannot run as root and there is no `postgres` OS user to run it as")
                }
                guard chown(directory, user.pointee.pw_uid, user.pointee.pw_gid) == 0 else {
                    throw Unavailable(description: "could not give \(directory) to the postgres user (errno \(errno))")
                }
            }
            let initdb = [
                binaries + "/initdb", "-D", data, "-U", superuser, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
            ]
            let status = try await runDetached(asPostgres: runAsPostgres, initdb, output: directory + "/initdb.log", in: directory)
            guard status == 0 else {
                throw Unavailable(description: "initdb failed (status \(status)):\n\(tail(of: directory + "/initdb.log"))")
            }
            // A port picked free can be taken before the server binds it: try a few.
            var lastFailure = ""
            for _ in 0..<3 {
                let port = try freeLoopbackPort()
                let running = try spawnServer(
                    binaries: binaries, directory: directory, data: data, port: port, runAsPostgres: runAsPostgres
                )
                atExit.withLock { $0 = running }
                if try await waitUntilReady(running) { return running }
                lastFailure = tail(of: directory + "/server.log")
                stop(running, removing: false)
                atExit.withLock { $0 = nil }
            }
            throw Unavailable(description: "the test PostgreSQL server did not start:\n\(lastFailure)")
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    /// The directory with `initdb`, `pg_ctl` and `postgres`: the one `initdb` on PATH resolves
    /// to, else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
    private static func findBinaries() throws -> String {
        let fileManager = FileManager.default
        func complete(_ directory: String) -> Bool {
            ["initdb", "pg_ctl", "postgres"].allSatisfy { fileManager.isExecutableFile(atPath: directory + "/" + $0) }
        }
        var candidates: [String] = []
        for entry in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let path = String(entry) + "/initdb"
            if fileManager.isExecutableFile(atPath: path) {
                candidates.append(URL(fileURLWithPath: path).resolvingSymlinksInPath().deletingLastPathComponent().path)
            }
        }
        if let bindir = try? pgConfigBindir() { candidates.append(bindir) }
        let versions = (try? fileManager.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        candidates += versions.compactMap(Int.init).sorted(by: >).map { "/usr/lib/postgresql/\($0)/bin" }
        guard let found = candidates.first(where: complete) else {
            throw Unavailable(description: """
                PostgreSQL is not installed: no initdb, pg_ctl and postgres on PATH, from `pg_config --bindir` or in \
                /usr/lib/postgresql/*/bin. The postgres store tests need a server (Debian: apt-get install postgresql; .ci/run installs it).
                """)
        }
        return found
    }

    private static func pgConfigBindir() throws -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["pg_config", "--bindir"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        return String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private static func freeLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Unavailable(description: "socket() failed (errno \(errno))") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw Unavailable(description: "could not find a free loopback port (errno \(errno))") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Starts the server under its lifeline shell; returns at once.
    private static func spawnServer(binaries: String, directory: String, data: String, port: Int, runAsPostgres: Bool) throws -> Running {
        // The shell's standard input is the lifeline: `cat` returns when this process closes its
        // end or dies, and the server is then stopped at once (SIGQUIT: immediate shutdown).
        let script = """
            "$0" -D "$1" -p "$2" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$3" \
                -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 &
            server=$!
            cat >/dev/null
            kill -QUIT "$server" 2>/dev/null
            wait "$server"
            """
        var ends: [Int32] = [0, 0]
        // Close-on-exec: no other child may hold the lifeline open (the tests run one at a time).
        guard pipe(&ends) == 0, fcntl(ends[0], F_SETFD, FD_CLOEXEC) == 0, fcntl(ends[1], F_SETFD, FD_CLOEXEC) == 0 else {
            throw Unavailable(description: "pipe failed (errno \(errno))")
        }
        defer { close(ends[0]) }
        let arguments = ["/bin/sh", "-c", script, binaries + "/postgres", data, String(port), directory]
        let pid: pid_t
        do {
            pid = try spawn(asPostgres: runAsPostgres, arguments, input: ends[0], output: directory + "/server.log", in: directory)
        } catch {
            close(ends[1])
            throw error
        }
        return Running(
            directory: directory, dataDirectory: data, port: port, binaries: binaries, runAsPostgres: runAsPostgres,
            serverPid: pid, lifeline: ends[1]
        )
    }

    /// Tries to connect until the server answers (true) or its shell has exited (false).
    private static func waitUntilReady(_ running: Running) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            do {
                try await withAdminConnection(port: running.port) { _ in }
                return true
            } catch {
                var status: Int32 = 0
                if waitpid(running.serverPid, &status, WNOHANG) == running.serverPid { return false }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        throw Unavailable(description: "the test PostgreSQL server did not answer within 60 s:\n\(tail(of: running.directory + "/server.log"))")
    }

    // MARK: Stopping

    /// Registers the exit handler; runs once, before the first test uses the cluster.
    private static let registerExitHandler: Void = {
        atexit {
            guard let running = PostgresTestCluster.atExit.withLock({ $0.take() }) else { return }
            PostgresTestCluster.stop(running, removing: true)
        }
    }()

    /// `pg_ctl stop -m immediate`, then the lifeline closed and the shell reaped; the directory
    /// removed unless another server is to be tried in it.
    private static func stop(_ running: Running, removing: Bool) {
        let pgCtl = [running.binaries + "/pg_ctl", "stop", "-D", running.dataDirectory, "-m", "immediate", "-w", "-t", "30"]
        if let pid = try? spawn(asPostgres: running.runAsPostgres, pgCtl, input: nil, output: running.directory + "/pg_ctl.log", in: running.directory) {
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
        }
        close(running.lifeline)
        var status: Int32 = 0
        _ = waitpid(running.serverPid, &status, 0)
        if removing { try? FileManager.default.removeItem(atPath: running.directory) }
    }

    // MARK: Processes

    /// Runs a command to its end on a thread of its own (not blocking the test's executor);
    /// returns its exit status.
    private static func runDetached(asPostgres: Bool, _ arguments: [String], output: String, in directory: String) async throws -> Int32 {
        let pid = try spawn(asPostgres: asPostgres, arguments, input: nil, output: output, in: directory)
        return await withCheckedContinuation { continuation in
            Thread {
                var status: Int32 = 0
                _ = waitpid(pid, &status, 0)
                // The exit code when it exited, 128 + the signal when it was killed.
                let exited = status & 0x7f == 0
                continuation.resume(returning: exited ? (status >> 8) & 0xff : 128 + (status & 0x7f))
            }.start()
        }
    }

    /// posix_spawn, as the postgres user through `runuser` when asked; standard input from `input`
    /// (else /dev/null), standard output and error appended to `output`, working directory
    /// `directory` (the postgres user may not enter this process's).
    private static func spawn(asPostgres: Bool, _ arguments: [String], input: Int32?, output: String, in directory: String) throws -> pid_t {
        let argv = (asPostgres ? ["runuser", "-u", superuser, "--"] : []) + ["/bin/sh", "-c", #"cd "$0" && exec "$@""#, directory] + arguments
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let input {
            posix_spawn_file_actions_adddup2(&actions, input, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o666)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var cArguments = argv.map { strdup($0) }
        var cEnvironment = ProcessInfo.processInfo.environment.map { strdup("\($0.key)=\($0.value)") }
        defer { (cArguments + cEnvironment).forEach { free($0) } }
        cArguments.append(nil)
        cEnvironment.append(nil)
        var pid: pid_t = 0
        let result = posix_spawnp(&pid, argv[0], &actions, nil, &cArguments, &cEnvironment)
        guard result == 0 else {
            throw Unavailable(description: "could not start \(argv[0]) (\(String(cString: strerror(result))))")
        }
        _ = registerExitHandler
        return pid
    }

    private static func tail(of path: String) -> String {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? "(no \(path))"
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(20).joined(separator: "\n")
    }
}
