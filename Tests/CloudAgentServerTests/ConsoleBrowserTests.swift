import Foundation
import Testing

/// The web console driven in a real headless Chromium: `scripts/console-e2e.sh` runs
/// `Tests/console/test_console.py` (Playwright for Python, Debian's `/usr/bin/chromium`)
/// against a real `cloud-agent serve` with short timings, signed in as two users.
@Suite("Web console in headless Chromium")
struct ConsoleBrowserTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Why the browser run cannot happen here, or nil when it can.
    static let skipReason: String? = {
        let environment = ProcessInfo.processInfo.environment
        if environment["CONSOLE_E2E"] == "0" { return "CONSOLE_E2E=0" }
        let chromium = environment["CHROMIUM"] ?? "/usr/bin/chromium"
        if !FileManager.default.isExecutableFile(atPath: chromium) { return "no browser at \(chromium): apt-get install -y chromium" }
        let path = environment["PATH"] ?? "/usr/bin:/bin"
        let found = path.split(separator: ":").contains { FileManager.default.isExecutableFile(atPath: "\($0)/python3") }
        return found ? nil : "python3 is not on PATH: scripts/console-e2e.sh needs it to install Playwright"
    }()

    @Test(
        "sign-in, start from the form, live events, interrupt, countdown then idle stop, cold follow-up, list, another user, HTML as text, CSP, no console errors",
        .enabled(if: skipReason == nil, Comment(rawValue: skipReason ?? ""))
    )
    func console() async throws {
        let directory = try TemporaryDirectory()
        // Every process of the run (serve, its runtimes, the script, Python, Chromium) works
        // inside `directory`: whatever happens, none outlives the test.
        defer {
            Reliability.killProcesses(under: directory.url)
            withExtendedLifetime(directory) {}
        }
        let data = directory.url.appendingPathComponent("data")
        // An ACP agent (the fixture), chosen from the form like any other.
        let agentsFile = directory.url.appendingPathComponent("agents.json")
        let fixture = Self.packageRoot.appendingPathComponent("Tests/Fixtures/agents/acp-fixture").path
        try Data(#"{"agents": [{"name": "fixture-acp", "command": ["\#(fixture)", "acp"], "protocol": "acp"}]}"#.utf8).write(to: agentsFile)
        let serve = try SpawnedCommand(["serve"], environment: [
            "CLOUD_AGENT_AGENTS_FILE": agentsFile.path,
            "CLOUD_AGENT_PORT": "0", "CLOUD_AGENT_DATA_DIR": data.path, "CLOUD_AGENT_SANDBOX": "none",
            "CLOUD_AGENT_IDLE_TIMEOUT": "4s", "CLOUD_AGENT_STOP_GRACE": "1s", "CLOUD_AGENT_HEARTBEAT_INTERVAL": "1s",
        ], in: directory.url)
        defer { serve.forceStop() }
        let server = try await RunningServer.awaitBanner(serve)

        let tokens = try SpawnedCommand(["tokens", "create", "--user", "other", "--data-dir", data.path], in: directory.url)
        defer { tokens.forceStop() }
        try #require(try await tokens.waitForExit(within: 30), "\(tokens.diagnostics)")
        let other = try #require(tokens.stdout.split(separator: "\n").last.map { $0.trimmingCharacters(in: .whitespaces) }, "\(tokens.diagnostics)")

        let output = directory.url.appendingPathComponent("console-e2e.out")
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        let handle = try FileHandle(forWritingTo: output)
        defer { try? handle.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [Self.packageRoot.appendingPathComponent("scripts/console-e2e.sh").path]
        process.currentDirectoryURL = directory.url
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CLOUD_AGENT_") }
        environment["TMPDIR"] = directory.url.path
        environment["CONSOLE_URL"] = server.baseURL.absoluteString
        environment["CONSOLE_TOKEN"] = server.token
        environment["CONSOLE_OTHER_TOKEN"] = other
        environment["CONSOLE_FAILURES"] = directory.url.path
        process.environment = environment
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        defer {
            if process.isRunning {
                Reliability.killProcesses(under: directory.url)
                process.waitUntilExit()
            }
        }
        // Playwright's install (first run only), then about a minute of browsing.
        try await eventually(within: 600, "scripts/console-e2e.sh to finish") { !process.isRunning }
        let text = (try? String(contentsOf: output, encoding: .utf8)) ?? ""
        #expect(process.terminationReason == .exit && process.terminationStatus == 0,
                "scripts/console-e2e.sh failed (\(process.terminationStatus)):\n\(text.suffix(12_000))\nserve:\n\(serve.stderr.suffix(4000))")
        #expect(text.contains(" passed, 0 failed"), "\(text.suffix(4000))")
        #expect(serve.isRunning, "serve stayed up")
    }
}
