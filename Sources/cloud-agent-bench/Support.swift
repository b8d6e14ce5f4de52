import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import Histogram
import Logging
import ServiceLifecycle
import Synchronization
#if canImport(Glibc)
    import Glibc
#endif
// `timespec` and `timeval` come through NIO's C shim too; in a whole-module (release) build its
// header can be the one their fields are attributed to (MemberImportVisibility).
#if canImport(CNIOLinux)
    import CNIOLinux
#endif

/// A benchmark that could not run to its end.
struct BenchFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: Clocks and CPU

enum Measure {
    /// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of this machine, so a
    /// timestamp written by one process can be compared with `now` in another.
    static func monotonicNanos() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }

    /// User + system CPU time of this process so far, in microseconds.
    static func cpuMicros() -> Double {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        func micros(_ time: timeval) -> Double { Double(time.tv_sec) * 1_000_000 + Double(time.tv_usec) }
        return micros(usage.ru_utime) + micros(usage.ru_stime)
    }

    /// Seconds elapsed since `start`.
    static func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = ContinuousClock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    /// VmRSS of a process (`/proc/<pid>/status`), in kilobytes.
    static func residentKilobytes(pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        }
        return nil
    }
}

/// A latency histogram in microseconds (HdrHistogram, 3 significant digits, up to 10 minutes).
struct Latencies: Sendable {
    var histogram = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)

    mutating func record(micros: UInt64) { _ = histogram.record(min(micros, 600_000_000)) }
    mutating func add(_ other: Latencies) { histogram.add(other.histogram) }

    var count: Int { Int(histogram.totalCount) }
    func percentileMs(_ percentile: Double) -> Double { count == 0 ? .nan : Double(histogram.valueAtPercentile(percentile)) / 1000 }
    var maxMs: Double { count == 0 ? .nan : Double(histogram.max) / 1000 }

    /// p50/p90/p99/max in milliseconds, for a figure's parameters.
    var summary: [String: JSONValue] {
        func ms(_ value: Double) -> JSONValue { value.isFinite ? .number(Figure.rounded(value)) : .null }
        return [
            "p50Ms": ms(percentileMs(50)), "p90Ms": ms(percentileMs(90)), "p99Ms": ms(percentileMs(99)), "maxMs": ms(maxMs), "samples": .number(Double(count)),
        ]
    }
}

// MARK: Bounded waiting

/// Runs `body`, failing with a message naming `what` if it takes longer than `seconds`.
func withDeadline<T: Sendable>(_ seconds: Double, _ what: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw BenchFailure("timed out after \(seconds) s waiting for \(what)")
        }
        return value
    }
}

/// Polls `condition` every `everyMs` until it holds; false when `seconds` passed first.
@discardableResult
func waitUntil(_ seconds: Double, everyMs: Int = 20, _ condition: @Sendable () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(everyMs))
    }
    return try await condition()
}

// MARK: Files and processes

/// A temporary directory for one benchmark, removed by `remove()`.
struct ScratchDirectory: Sendable {
    let url: URL

    init(_ name: String) throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("cloud-agent-bench-\(name)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func remove() { try? FileManager.default.removeItem(at: url) }
}

/// The package's other executables (`cloud-agent`, `cloud-agent-runtime`): beside this one
/// (or in `$CLOUD_AGENT_BUILD_DIR`). When one is missing and this runs from a package's
/// `.build`, it is built first with `swift build --product`.
enum Products {
    static var ownDirectory: URL {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    }

    static var ownExecutable: URL { URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath() }

    static func locate(_ name: String, note: (String) -> Void) throws -> URL {
        let directory = ProcessInfo.processInfo.environment["CLOUD_AGENT_BUILD_DIR"].map { URL(fileURLWithPath: $0) } ?? ownDirectory
        let candidate = directory.appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        // .build/<triple>/<configuration>/ → the package root holds Package.swift.
        var root = directory
        while root.path != "/", !FileManager.default.fileExists(atPath: root.appendingPathComponent("Package.swift").path) {
            root = root.deletingLastPathComponent()
        }
        guard root.path != "/" else {
            throw BenchFailure("\(name) not found beside \(ownExecutable.path); build it (swift build --product \(name)) or set CLOUD_AGENT_BUILD_DIR")
        }
        // …/<scratch>/<triple>/<configuration>: build into the same scratch path and configuration.
        let release = directory.lastPathComponent == "release"
        let scratch = directory.deletingLastPathComponent().deletingLastPathComponent().path
        let arguments = ["build"] + (release ? ["-c", "release"] : []) + ["--scratch-path", scratch, "--product", name]
        note("\(name) is not built yet: swift \(arguments.joined(separator: " "))")
        let status = try run("/usr/bin/env", ["swift"] + arguments, in: root)
        guard status == 0, FileManager.default.isExecutableFile(atPath: candidate.path) else {
            throw BenchFailure("building \(name) failed (exit \(status)); run: swift build --product \(name)")
        }
        return candidate
    }

    /// Runs a command to completion (its output goes to our stderr).
    @discardableResult
    static func run(_ executable: String, _ arguments: [String], in directory: URL? = nil) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = directory }
        process.standardOutput = FileHandle.standardError
        process.standardError = FileHandle.standardError
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }
}

/// A shell command run to completion, output to a file; throws on a non-zero exit.
func shell(_ command: String, in directory: URL) throws {
    let output = directory.appendingPathComponent(".shell-\(UUID().uuidString).out")
    defer { try? FileManager.default.removeItem(at: output) }
    _ = FileManager.default.createFile(atPath: output.path, contents: nil)
    let handle = try FileHandle(forWritingTo: output)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    process.currentDirectoryURL = directory
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    process.waitUntilExit()
    try handle.close()
    guard process.terminationStatus == 0 else {
        throw BenchFailure("`\(command)` exited \(process.terminationStatus): \((try? String(contentsOf: output, encoding: .utf8)) ?? "")")
    }
}

// MARK: The control plane in this process

/// A real control plane (`ControlPlane.open` + `buildApplication`) listening on 127.0.0.1 on a
/// free port, on the store its configuration names (SQLite in a scratch directory, or
/// PostgreSQL), opened as `serve` opens it, run by a ServiceGroup in this process.
struct InProcessServer: Sendable {
    static let token = "bench-local-token-0123456789abcdef"

    let plane: ControlPlane
    let port: Int
    let running: RunningService
    let opened: OpenedStore

    var baseURL: String { "http://127.0.0.1:\(port)" }
    var webSocketBase: String { "ws://127.0.0.1:\(port)" }

    static func configuration(
        directory: URL, database: BenchDatabase = .sqlite, timing: Timing = Timing(), maxRuntimes: Int = 32, sandbox: SandboxMode = .none,
        runtime: URL? = nil
    ) -> ServerConfiguration {
        var configuration = ServerConfiguration(
            host: "127.0.0.1", port: 0, dataDirectory: directory.appendingPathComponent("data"), databaseURL: database.url, apiToken: token,
            timing: timing, maxRuntimes: maxRuntimes, sandbox: sandbox, logLevel: .warning
        )
        // Never the `cloud-agent-runtime` beside the bench by accident: benchmarks that launch
        // real runtimes pass it; the others point at a path that does not exist.
        configuration.runtimeExecutable = runtime ?? directory.appendingPathComponent("no-runtime-in-this-benchmark")
        return configuration
    }

    static func logger(_ level: String) -> Logger {
        var logger = Logger(label: "cloud-agent-bench.server") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = Logger.Level(rawValue: level) ?? .error
        return logger
    }

    /// `asNode`: one node of several on a PostgreSQL database (`OpenedStore.open(asNode:)`).
    static func start(_ configuration: ServerConfiguration, logLevel: String, asNode: Bool = false) async throws -> InProcessServer {
        let logger = logger(logLevel)
        let opened = try await OpenedStore.open(configuration, asNode: asNode, logger: logger)
        do {
            let plane = try await ControlPlane.open(configuration, store: opened.store, membership: opened.membership, logger: logger)
            let (ports, continuation) = AsyncStream<Int>.makeStream()
            let app = plane.buildApplication { port in
                continuation.yield(port)
                continuation.finish()
            }
            let running = try await RunningService.start(app, ports: ports, logger: logger)
            return InProcessServer(plane: plane, port: running.port, running: running, opened: opened)
        } catch {
            await opened.close()
            throw error
        }
    }

    func stop() async {
        await running.stop()
        await opened.close()
    }
}

/// A service (an HTTP application) run by a ServiceGroup in this process until `stop()`.
struct RunningService: Sendable {
    let port: Int
    let group: ServiceGroup
    let task: Task<Void, any Error>
    let finished: OnceFlag

    /// Runs `service`; `ports` yields the port once it listens.
    static func start(_ service: some Service, ports: AsyncStream<Int>, logger: Logger) async throws -> RunningService {
        let group = ServiceGroup(configuration: .init(services: [service], gracefulShutdownSignals: [], logger: logger))
        let finished = OnceFlag()
        let task = Task {
            defer { finished.set() }
            try await group.run()
        }
        do {
            let port = try await withDeadline(30, "the server to listen") {
                for await port in ports { return port }
                throw BenchFailure("the server stopped before listening")
            }
            return RunningService(port: port, group: group, task: task, finished: finished)
        } catch {
            task.cancel()
            throw error
        }
    }

    /// Graceful shutdown, bounded: cancelled after 10 s.
    func stop() async {
        await group.triggerGracefulShutdown()
        if !(await waitUntil(10, everyMs: 20) { finished.isSet }) { task.cancel() }
    }
}

/// A value shared by tasks, behind a lock.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<Result: Sendable>(_ body: (inout Value) -> Result) -> Result { mutex.withLock { body(&$0) } }
    var value: Value { mutex.withLock { $0 } }
}

/// A counter shared by tasks.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    init() {}
    var count: Int { value.load(ordering: .relaxed) }
    func add(_ amount: Int) { value.add(amount, ordering: .relaxed) }
}

/// A flag set once, read from anywhere.
final class OnceFlag: Sendable {
    private let value = Atomic<Bool>(false)
    init() {}
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}

/// The acknowledgements of one connection: the highest seq acknowledged, and tasks waiting for
/// a seq to be acknowledged (or for the connection to end).
final class AckWaiters: Sendable {
    private let state = Mutex<(acked: Int64, closed: Bool, waiters: [(seq: Int64, continuation: CheckedContinuation<Void, Never>)])>((0, false, []))

    var acked: Int64 { state.withLock { $0.acked } }

    /// Records a cumulative acknowledgement; returns how many seqs it newly covers.
    @discardableResult
    func acknowledge(_ seq: Int64) -> Int64 {
        var ready: [CheckedContinuation<Void, Never>] = []
        let delta: Int64 = state.withLock { state in
            guard seq > state.acked else { return 0 }
            let delta = seq - state.acked
            state.acked = seq
            ready = state.waiters.filter { $0.seq <= seq }.map(\.continuation)
            state.waiters.removeAll { $0.seq <= seq }
            return delta
        }
        for continuation in ready { continuation.resume() }
        return delta
    }

    /// The connection ended: every waiter returns.
    func close() {
        let waiting = state.withLock { state in
            state.closed = true
            defer { state.waiters.removeAll() }
            return state.waiters.map(\.continuation)
        }
        for continuation in waiting { continuation.resume() }
    }

    /// Waits until `seq` is acknowledged or the connection ends.
    func wait(for seq: Int64) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.closed || state.acked >= seq { return true }
                state.waiters.append((seq, continuation))
                return false
            }
            if now { continuation.resume() }
        }
    }
}
