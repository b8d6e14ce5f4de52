import CloudAgentTestSupport
import CloudAgentProtocol
import CloudAgentRuntime
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A `cloud-agent-runtime` process started by a test.
struct LaunchedRuntime {
    let process: TestProcess
    let workspace: URL
    let runtimeId: String
    let secret: String
}

enum RuntimeLaunch {
    static let sessionId = "agent_runtime_test"
    /// The orphan limit of the runtimes the tests start: one left behind by a test that failed
    /// half-way ends itself, and it is far above any downtime a test makes on purpose.
    static let orphanLimitMs = 30_000
}

/// Starts the runtime against `plane` (whose URL is read now, so a server started again on the
/// same port is found again); afterwards kills it and every agent group it reported.
/// `controlURL` replaces the plane's URL as `CLOUD_AGENT_CONTROL_URL`; `otherControlURLs` are
/// `CLOUD_AGENT_CONTROL_URLS` (the other nodes).
func withRuntime(
    _ plane: FakeControlPlane,
    controlURL: String? = nil,
    otherControlURLs: [String] = [],
    stopGraceMs: Int = 5_000,
    idleTimeoutMs: Int? = nil,
    orphanLimitMs: Int = RuntimeLaunch.orphanLimitMs,
    outboxLimitBytes: Int? = nil,
    _ body: (LaunchedRuntime) async throws -> Void
) async throws {
    let workspace = try makeTemporaryDirectory("runtime-workspace")
    let logs = try makeTemporaryDirectory("runtime-logs")
    let runtimeId = "rt_\(UUID().uuidString.prefix(8))"
    let secret = "secret-\(UUID().uuidString)"
    let planeURL = await plane.url
    var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CLOUD_AGENT_") }
    environment.merge([
        "CLOUD_AGENT_CONTROL_URL": controlURL ?? planeURL,
        "SESSION_ID": RuntimeLaunch.sessionId,
        "CLOUD_AGENT_RUNTIME_ID": runtimeId,
        "CLOUD_AGENT_WORKSPACE": workspace.path,
        "CLOUD_AGENT_LOG_LEVEL": "debug",
        "CLOUD_AGENT_STOP_GRACE_MS": "\(stopGraceMs)",
        "CLOUD_AGENT_ORPHAN_LIMIT_MS": "\(orphanLimitMs)",
        "SESSION_HOME": workspace.path,
        "MY_SESSION_VARIABLE": "visible",
    ]) { $1 }
    if !otherControlURLs.isEmpty { environment["CLOUD_AGENT_CONTROL_URLS"] = otherControlURLs.joined(separator: ",") }
    if let idleTimeoutMs { environment["CLOUD_AGENT_IDLE_TIMEOUT_MS"] = "\(idleTimeoutMs)" }
    if let outboxLimitBytes { environment["CLOUD_AGENT_OUTBOX_LIMIT_BYTES"] = "\(outboxLimitBytes)" }
    let process = try TestProcess(
        try runtimeBinary(),
        arguments: [],
        environment: environment,
        directory: logs,
        stdin: secret + "\n",
        outputIn: logs
    )
    let runtime = LaunchedRuntime(process: process, workspace: workspace, runtimeId: runtimeId, secret: secret)
    func cleanUp() async {
        await process.terminate()
        for event in await plane.orderedEvents where event.kind == RuntimeEvent.Kind.running {
            if let group = event.data["processGroup"]?.intValue { ProcessGroup.signal(Int32(group), SIGKILL) }
        }
        try? FileManager.default.removeItem(at: workspace)
        try? FileManager.default.removeItem(at: logs)
    }
    do {
        try await body(runtime)
        // Logs at debug level, and still neither the secret nor the session's variables.
        let log = process.stderr
        #expect(!log.contains(secret))
        #expect(!log.contains("MY_SESSION_VARIABLE"))
        await cleanUp()
    } catch {
        print("runtime stderr:\n\(process.stderr.suffix(8000))")
        await cleanUp()
        throw error
    }
}
