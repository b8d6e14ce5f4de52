import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import HTTPTypes
import Synchronization
import Testing
#if canImport(Glibc)
    import Glibc
#endif

/// The reliability harness (`swift test --filter Reliability`): the crash soak, chaos on
/// runtimes, API fuzzing and hostile inputs; see RELIABILITY.md. Each part holds a permit of the
/// processes gate, as every test of real processes does, and the crash soak — twenty sandboxed
/// runtimes and a control plane killed three times, its downtime measured — runs alone.
@Suite("Reliability harness", .processes)
struct ReliabilityHarness {}

/// Shared pieces of the reliability harness (`swift test --filter Reliability`): seeded
/// randomness, a tally printed at the end of each part, the clean-up of every process a test's
/// control plane launched, and a raw WebSocket client that can send what real clients never do.
enum Reliability {
    /// A seed for one part of the harness: `RELIABILITY_SEED` when set (to replay a run), else
    /// the clock. Printed, so that any run can be replayed.
    static func seed(_ part: String) -> UInt64 {
        let seed =
            ProcessInfo.processInfo.environment["RELIABILITY_SEED"].flatMap { UInt64($0) }
            ?? UInt64(Date().timeIntervalSince1970 * 1000)
        report(part, "seed \(seed) (replay with RELIABILITY_SEED=\(seed))")
        return seed
    }

    /// One line of the harness's findings, on stdout (the numbers RELIABILITY.md records).
    static func report(_ part: String, _ line: String) {
        print("[reliability] \(part): \(line)")
    }

    /// Runs blocking work (plain sockets) on a thread of its own: on the cooperative pool it
    /// would starve the in-process servers, whose handlers need that pool to answer it.
    static func offThePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
        }
    }

    /// `.build/reliability-logs/<part>/`: the logs of a part's last run.
    static func logsDirectory(of part: String) -> URL {
        TestServer.buildProducts.deletingLastPathComponent().appendingPathComponent("reliability-logs/\(part)")
    }

    /// Copies the logs a part left in `directory` (spawned servers' `.stdout`/`.stderr`, runtime
    /// logs) to `logsDirectory(of: part)`, so that a failed run can be read afterwards.
    static func keepLogs(of part: String, from directory: URL) {
        let target = logsDirectory(of: part)
        try? FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
        let files = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: nil)?.allObjects.compactMap { $0 as? URL } ?? []
        for file in files where ["stdout", "stderr", "log"].contains(file.pathExtension) {
            let name = file.deletingPathExtension().lastPathComponent + "." + file.pathExtension
            try? FileManager.default.removeItem(at: target.appendingPathComponent(name))
            try? FileManager.default.copyItem(at: file, to: target.appendingPathComponent(name))
        }
    }

    /// The processes (other than this one) whose working directory is `directory` or below it.
    static func processes(under directory: URL) -> [Int32] {
        let root = directory.resolvingSymlinksInPath().path
        guard !root.isEmpty, root != "/", let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { entry in
            guard let pid = Int32(entry), pid != getpid(),
                let cwd = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(entry)/cwd"),
                cwd == root || cwd.hasPrefix(root + "/") || cwd.hasPrefix(root + " ")
            else { return nil }
            return pid
        }
    }

    /// SIGKILLs every process whose working directory is inside `directory` (other than this
    /// one): the runtimes and agents a test's control plane launched, which are detached from it
    /// by design and would outlive the test. Returns how many were killed.
    @discardableResult
    static func killProcesses(under directory: URL) -> Int {
        processes(under: directory).filter { kill($0, SIGKILL) == 0 }.count
    }

    // MARK: Scripts that drive a real server (scripts/fuzz-api.sh, scripts/console-e2e.sh)

    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Why a script that installs Python packages cannot run here: `VARIABLE=0`, or no python3
    /// on PATH; nil when it can.
    static func pythonScriptSkipReason(switchedOffBy variable: String, script: String, installs: String) -> String? {
        if ProcessInfo.processInfo.environment[variable] == "0" { return "\(variable)=0" }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let found = path.split(separator: ":").contains { FileManager.default.isExecutableFile(atPath: "\($0)/python3") }
        return found ? nil : "python3 is not on PATH: \(script) needs it to install \(installs)"
    }

    /// How a script ended, and what it printed (stdout and stderr together).
    struct ScriptRun {
        var process: Process
        var output: String

        var succeeded: Bool { process.terminationReason == .exit && process.terminationStatus == 0 }
    }

    /// Runs `scripts/NAME` with bash until it ends (at most `seconds`). It works in `directory`,
    /// with its temporary files there too, so that every process of the run (the script, a
    /// server, Python, a browser, runtimes) is inside it and `killProcesses(under:)` takes the
    /// whole run down whatever happens. Its environment is this process's without `CLOUD_AGENT_*`,
    /// plus `environment`.
    static func runScript(_ name: String, in directory: URL, environment: [String: String], within seconds: Double) async throws -> ScriptRun {
        let output = directory.appendingPathComponent("\(name).out")
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        let handle = try FileHandle(forWritingTo: output)
        defer { try? handle.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [packageRoot.appendingPathComponent("scripts/\(name)").path]
        process.currentDirectoryURL = directory
        var variables = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CLOUD_AGENT_") }
        variables["TMPDIR"] = directory.path
        variables.merge(environment) { _, given in given }
        process.environment = variables
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        defer {
            if process.isRunning { killProcesses(under: directory) }
        }
        try await eventually(within: seconds, "scripts/\(name) to finish") { !process.isRunning }
        return ScriptRun(process: process, output: (try? String(contentsOf: output, encoding: .utf8)) ?? "")
    }
}

/// SplitMix64: small, fast and reproducible from its seed.
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Counts shared by the concurrent tasks of one part.
final class Tally: Sendable {
    private let counts = Mutex<[String: Int]>([:])
    func add(_ name: String, _ amount: Int = 1) { counts.withLock { $0[name, default: 0] += amount } }
    subscript(_ name: String) -> Int { counts.withLock { $0[name, default: 0] } }
    var summary: String { counts.withLock { $0.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") } }
}

/// A WebSocket client over a plain socket that sends frames of any size or shape (oversized,
/// fragmented past the message limit, garbage), to check what the server does with them.
final class HostileWebSocket: @unchecked Sendable {
    private let fd: Int32
    /// The HTTP status of the upgrade answer (101 when the WebSocket opened).
    private(set) var status = 0
    private(set) var responseHead = ""

    /// Connects and sends an upgrade request; `status` tells whether the server upgraded.
    init(port: Int, path: String, headers: [String: String]) throws {
        fd = try loopbackSocket(port: port)
        var request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        request += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        request += "\r\n"
        guard send(Array(request.utf8)) else { return }
        var head: [UInt8] = []
        while !head.suffix(4).elementsEqual([13, 10, 13, 10]), let byte = read(1)?.first { head.append(byte) }
        responseHead = String(decoding: head, as: UTF8.self)
        status = responseHead.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    }

    deinit { close(fd) }

    /// Sends raw bytes; false once the server has closed or reset the connection (no SIGPIPE).
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool { sendAll(bytes, to: fd) }

    /// One masked client frame (`fin` false for all but the last fragment of a message).
    @discardableResult
    func sendFrame(opcode: UInt8, payload: [UInt8], fin: Bool = true) -> Bool {
        var frame: [UInt8] = [(fin ? 0x80 : 0) | opcode]
        let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
        switch payload.count {
        case ..<126: frame.append(0x80 | UInt8(payload.count))
        case ..<65536: frame += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        default: frame += [0x80 | 127] + (0..<8).reversed().map { UInt8((payload.count >> ($0 * 8)) & 0xFF) }
        }
        frame += mask
        frame.reserveCapacity(frame.count + payload.count)
        for (index, byte) in payload.enumerated() { frame.append(byte ^ mask[index & 3]) }
        return send(frame)
    }

    /// Whether the last failed read was the socket's timeout rather than the end of the stream.
    private var timedOut = false

    private func read(_ count: Int) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let received = buffer[offset...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard received > 0 else {
                timedOut = received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
                return nil
            }
            offset += received
        }
        return buffer
    }

    /// How the server ended the connection: its close frame's code, or nil when it just dropped
    /// it; `closed` is false only when nothing happened within the socket's 10 s timeout.
    struct Ending: Sendable {
        var closed: Bool
        var closeCode: Int?
        var texts: [String]
    }

    /// Reads frames until the server closes (blocking; run it off the cooperative pool).
    func readUntilClosed() -> Ending {
        var texts: [String] = []
        while true {
            guard let header = read(2) else { return Ending(closed: !timedOut, closeCode: nil, texts: texts) }
            var length = Int(header[1] & 0x7F)
            if length == 126 {
                length = read(2)?.reduce(0) { $0 << 8 | Int($1) } ?? 0
            } else if length == 127 {
                length = read(8)?.reduce(0) { $0 << 8 | Int($1) } ?? 0
            }
            guard let payload = read(length) else { return Ending(closed: true, closeCode: nil, texts: texts) }
            switch header[0] & 0x0F {
            case 0x1: texts.append(String(decoding: payload, as: UTF8.self))
            case 0x8: return Ending(closed: true, closeCode: payload.count >= 2 ? Int(payload[0]) << 8 | Int(payload[1]) : nil, texts: texts)
            default: continue
            }
        }
    }

    func readUntilClosedInBackground() async -> Ending {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: self.readUntilClosed()) }
        }
    }

    /// Connects and sends the upgrade request off the cooperative pool.
    static func open(port: Int, path: String, headers: [String: String]) async throws -> HostileWebSocket {
        try await Reliability.offThePool { try HostileWebSocket(port: port, path: path, headers: headers) }
    }
}

extension TestAPI {
    /// `/healthz` answers 200: the server survived whatever came before.
    func isHealthy() async -> Bool {
        (try? await request(.get, "/healthz", token: nil).status) == 200
    }
}
