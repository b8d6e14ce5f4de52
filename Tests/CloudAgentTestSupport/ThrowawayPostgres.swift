import Foundation
import Logging
import PostgresNIO
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A throwaway PostgreSQL cluster: `initdb` in a fresh temporary directory, the server on a free
/// loopback port (trust auth), stopped and removed by `stop()` or at the latest when the process
/// exits. The system's cluster is never touched. The tests share one (`PostgresTestCluster`); the
/// bench starts one per run (`--postgres`).
///
/// PostgreSQL refuses to run as root, so under root (as CI runs) every server command runs as the
/// `postgres` OS user through `runuser`, in a directory owned by it.
///
/// The server runs under a small shell that stops it when its standard input — a pipe whose other
/// end only this process holds — closes: at `stop()`, at exit, and also when this process crashes
/// or is killed, so that no server outlives it.
public final class ThrowawayPostgres: Sendable {
    /// Why a cluster could not be had. PostgreSQL missing is a failure, not a skip: CI installs
    /// it, so a missing server means a broken setup.
    public struct Unavailable: Error, CustomStringConvertible {
        public var description: String
    }

    public static let superuser = "postgres"
    static let logger = Logger(label: "cloud-agent.postgres.throwaway", factory: { _ in SwiftLogNoOpLogHandler() })

    public let directory: String
    public let dataDirectory: String
    public let port: Int
    private let binaries: String
    private let runAsPostgres: Bool
    /// The shell that runs the server.
    private let serverPid: pid_t
    /// This process's end of the server's lifeline.
    private let lifeline: Int32
    private let stopped = Atomic<Bool>(false)

    /// The clusters to stop at exit.
    private static let running = Mutex<[ThrowawayPostgres]>([])

    private init(directory: String, dataDirectory: String, port: Int, binaries: String, runAsPostgres: Bool, serverPid: pid_t, lifeline: Int32) {
        self.directory = directory
        self.dataDirectory = dataDirectory
        self.port = port
        self.binaries = binaries
        self.runAsPostgres = runAsPostgres
        self.serverPid = serverPid
        self.lifeline = lifeline
    }

    /// initdb, then the server with `settings` (`-c NAME=VALUE` each, after listen address and
    /// socket directory); returns once it accepts connections. `name` prefixes the directory.
    public static func start(settings: [String], name: String) async throws -> ThrowawayPostgres {
        let binaries = try await findBinaries()
        let runAsPostgres = getuid() == 0
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString.prefix(8))").path
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
            let initdb = [binaries + "/initdb", "-D", data, "-U", superuser, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
            let status = await exitStatus(of: try spawn(asPostgres: runAsPostgres, initdb, input: nil, output: directory + "/initdb.log", in: directory))
            guard status == 0 else { throw Unavailable(description: "initdb failed (status \(status)):\n\(tail(of: directory + "/initdb.log"))") }
            // A port picked free can be taken before the server binds it: try a few.
            for _ in 0..<3 {
                let cluster = try spawnServer(
                    binaries: binaries, directory: directory, data: data, port: try freeLoopbackPort(), settings: settings, runAsPostgres: runAsPostgres
                )
                running.withLock { $0.append(cluster) }
                _ = registerExitHandler
                if await cluster.waitUntilReady() { return cluster }
                await cluster.shutdown(removing: false)
            }
            throw Unavailable(description: "the throwaway PostgreSQL server did not start:\n\(tail(of: directory + "/server.log"))")
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    /// A connection to the `postgres` database as the superuser, for `body`, then closed.
    public func withAdminConnection(_ body: (PostgresConnection) async throws -> Void) async throws {
        let configuration = PostgresConnection.Configuration(
            host: "127.0.0.1", port: port, username: Self.superuser, password: nil, database: "postgres", tls: .disable
        )
        let connection = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: Self.logger)
        do {
            try await body(connection)
        } catch {
            try? await connection.close()
            throw error
        }
        try await connection.close()
    }

    /// `pg_ctl stop` (`-m fast`, or `-m immediate`), the lifeline closed, the shell reaped, the
    /// directory removed. Once.
    public func stop(immediately: Bool = false, removing: Bool = true) {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let pgCtl = [binaries + "/pg_ctl", "stop", "-D", dataDirectory, "-m", immediately ? "immediate" : "fast", "-w", "-t", "30"]
        if let pid = try? Self.spawn(asPostgres: runAsPostgres, pgCtl, input: nil, output: directory + "/pg_ctl.log", in: directory) {
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
        }
        close(lifeline)
        var status: Int32 = 0
        _ = waitpid(serverPid, &status, 0)
        if removing { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// `stop()` on a thread of its own, awaited: for a task, which must not block its thread on
    /// `pg_ctl` and the server's exit.
    public func shutdown(immediately: Bool = false, removing: Bool = true) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread {
                self.stop(immediately: immediately, removing: removing)
                continuation.resume()
            }.start()
        }
    }

    /// `stop()` on a thread of its own, not awaited: for a test's `defer`, which cannot await.
    public func stopDetached() { Thread { self.stop() }.start() }

    /// Stops the server as `pg_ctl stop -m fast` does (its sessions are ended, it shuts down
    /// cleanly) and keeps its data: the database is away until `resume()`. Returns once it
    /// refuses connections.
    public func pause() async throws {
        try tell("pause")
        let deadline = ContinuousClock.now + .seconds(30)
        while (try? await withAdminConnection { _ in }) != nil {
            guard ContinuousClock.now < deadline else { throw Unavailable(description: "the server did not stop within 30 s") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Starts the paused server again, on the same data and port; returns once it accepts connections.
    public func resume() async throws {
        try tell("resume")
        guard await waitUntilReady() else { throw Unavailable(description: "the server did not start again:\n\(Self.tail(of: directory + "/server.log"))") }
    }

    private func tell(_ command: String) throws {
        let line = Array((command + "\n").utf8)
        guard !stopped.load(ordering: .acquiring), line.withUnsafeBytes({ write(lifeline, $0.baseAddress, $0.count) }) == line.count else {
            throw Unavailable(description: "the server's shell is gone")
        }
    }

    /// Every cluster still running is stopped when the process exits.
    private static let registerExitHandler: Void = {
        atexit {
            for cluster in ThrowawayPostgres.running.withLock({ $0 }) { cluster.stop(immediately: true) }
        }
    }()

    /// Until the server accepts a connection (true), or its shell exited (false); at most 60 s.
    private func waitUntilReady() async -> Bool {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if (try? await withAdminConnection { _ in }) != nil { return true }
            var status: Int32 = 0
            if waitpid(serverPid, &status, WNOHANG) == serverPid { return false }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    // MARK: Processes

    /// The directory with `initdb`, `pg_ctl` and `postgres`: the one `initdb` on PATH resolves
    /// to, else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
    private static func findBinaries() async throws -> String {
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
        if let bindir = try? await shell("pg_config --bindir 2>/dev/null") {
            candidates.append(bindir.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        let versions = (try? fileManager.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        candidates += versions.compactMap(Int.init).sorted(by: >).map { "/usr/lib/postgresql/\($0)/bin" }
        guard let found = candidates.first(where: complete) else {
            throw Unavailable(
                description: """
                    PostgreSQL is not installed: no initdb, pg_ctl and postgres on PATH, from `pg_config --bindir` or in \
                    /usr/lib/postgresql/*/bin. The postgres store tests need a server (Debian: apt-get install postgresql; .ci/run installs it).
                    """)
        }
        return found
    }

    /// Starts the server under its lifeline shell; returns at once.
    private static func spawnServer(
        binaries: String, directory: String, data: String, port: Int, settings: [String], runAsPostgres: Bool
    ) throws -> ThrowawayPostgres {
        // The loop ends when this process closes its end of the pipe or dies. A server still
        // running then (this process died without stopping it) is stopped at once (SIGQUIT:
        // immediate shutdown) and its directory removed; `stop()` stops it before.
        // Until then it reads `pause` (SIGINT: a fast shutdown, as `pg_ctl stop -m fast`) and
        // `resume` (the server again, on the same data and port) from the pipe: an outage.
        let script = """
            server="$1"; data="$2"; port="$3"; sockets="$4"; shift 4
            "$server" -D "$data" -p "$port" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$sockets" "$@" &
            pid=$!
            while read -r command; do
              case "$command" in
                pause) kill -INT "$pid" 2>/dev/null; wait "$pid" ;;
                resume) "$server" -D "$data" -p "$port" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$sockets" "$@" & pid=$! ;;
              esac
            done
            if kill -QUIT "$pid" 2>/dev/null; then wait "$pid"; rm -rf "$sockets"; else wait "$pid"; fi
            """
        var ends: [Int32] = [0, 0]
        // Close-on-exec: no other child (a server under test, runtimes) may hold the lifeline open.
        guard pipe(&ends) == 0, fcntl(ends[0], F_SETFD, FD_CLOEXEC) == 0, fcntl(ends[1], F_SETFD, FD_CLOEXEC) == 0 else {
            throw Unavailable(description: "pipe failed (errno \(errno))")
        }
        defer { close(ends[0]) }
        let arguments =
            ["/bin/sh", "-c", script, "sh", binaries + "/postgres", data, String(port), directory]
            + settings.flatMap { ["-c", $0] }
        let pid: pid_t
        do {
            pid = try spawn(asPostgres: runAsPostgres, arguments, input: ends[0], output: directory + "/server.log", in: directory)
        } catch {
            close(ends[1])
            throw error
        }
        return ThrowawayPostgres(
            directory: directory, dataDirectory: data, port: port, binaries: binaries, runAsPostgres: runAsPostgres, serverPid: pid, lifeline: ends[1]
        )
    }

    /// Waits for a process on a thread of its own (not blocking the caller's executor); its exit
    /// status (128 + signal when killed).
    private static func exitStatus(of pid: pid_t) async -> Int32 {
        await withCheckedContinuation { continuation in
            Thread {
                var status: Int32 = 0
                _ = waitpid(pid, &status, 0)
                continuation.resume(returning: status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))
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
        // The test process's threads block signals: the shell must start with none blocked and
        // default dispositions, or its `wait` never hears SIGCHLD.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var cArguments = argv.map { strdup($0) }
        var cEnvironment = ProcessInfo.processInfo.environment.map { strdup("\($0.key)=\($0.value)") }
        defer { (cArguments + cEnvironment).forEach { free($0) } }
        cArguments.append(nil)
        cEnvironment.append(nil)
        var pid: pid_t = 0
        let result = posix_spawnp(&pid, argv[0], &actions, &attributes, &cArguments, &cEnvironment)
        guard result == 0 else {
            throw Unavailable(description: "could not start \(argv[0]) (\(String(cString: strerror(result))))")
        }
        return pid
    }

    private static func tail(of path: String) -> String {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? "(no \(path))"
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(20).joined(separator: "\n")
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released): a server started on it may still lose
/// it to another process first, so callers retry.
public func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw ThrowawayPostgres.Unavailable(description: "socket() failed (errno \(errno))") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw ThrowawayPostgres.Unavailable(description: "could not find a free loopback port (errno \(errno))") }
    return Int(UInt16(bigEndian: address.sin_port))
}
