import CloudAgentTestSupport
import Foundation
import Testing

/// The web console driven in a real headless Chromium: `scripts/console-e2e.sh` runs
/// `Tests/console/test_console.py` (Playwright for Python, Debian's `/usr/bin/chromium`)
/// against a real `cloud-agent serve` with short timings, signed in as two users.
@Suite("Web console in headless Chromium", .processes)
struct ConsoleBrowserTests {
    static let packageRoot = Reliability.packageRoot

    /// Why the browser run cannot happen here, or nil when it can.
    static let skipReason: String? = {
        let chromium = ProcessInfo.processInfo.environment["CHROMIUM"] ?? "/usr/bin/chromium"
        if ProcessInfo.processInfo.environment["CONSOLE_E2E"] != "0", !FileManager.default.isExecutableFile(atPath: chromium) {
            return "no browser at \(chromium): apt-get install -y chromium"
        }
        return Reliability.pythonScriptSkipReason(switchedOffBy: "CONSOLE_E2E", script: "scripts/console-e2e.sh", installs: "Playwright")
    }()

    @Test(
        "sign-in, start from the form, live events, interrupt, countdown then idle stop, cold follow-up, list, another user, HTML as text, CSP, no console errors",
        .long, .enabled(if: skipReason == nil, Comment(rawValue: skipReason ?? ""))
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
        let serve = try SpawnedCommand(
            ["serve"],
            environment: [
                "CLOUD_AGENT_AGENTS_FILE": agentsFile.path,
                "CLOUD_AGENT_PORT": "0", "CLOUD_AGENT_DATA_DIR": data.path,
                "CLOUD_AGENT_IDLE_TIMEOUT": "4s", "CLOUD_AGENT_STOP_GRACE": "1s", "CLOUD_AGENT_HEARTBEAT_INTERVAL": "1s",
            ], in: directory.url)
        defer { serve.forceStop() }
        let server = try await RunningServer.awaitBanner(serve)

        let tokens = try SpawnedCommand(["tokens", "create", "--user", "other", "--data-dir", data.path], in: directory.url)
        defer { tokens.forceStop() }
        try #require(try await tokens.waitForExit(within: 30), "\(tokens.diagnostics)")
        let other = try #require(tokens.stdout.split(separator: "\n").last.map { $0.trimmingCharacters(in: .whitespaces) }, "\(tokens.diagnostics)")

        // Playwright's install (first run only), then about a minute of browsing.
        let run = try await Reliability.runScript(
            "console-e2e.sh", in: directory.url,
            environment: [
                "CONSOLE_URL": server.baseURL.absoluteString, "CONSOLE_TOKEN": server.token, "CONSOLE_OTHER_TOKEN": other,
                "CONSOLE_FAILURES": directory.url.path,
            ], within: 600)
        let process = run.process
        let text = run.output
        #expect(
            process.terminationReason == .exit && process.terminationStatus == 0,
            "scripts/console-e2e.sh failed (\(process.terminationStatus)):\n\(text.suffix(12_000))\nserve:\n\(serve.stderr.suffix(4000))")
        #expect(text.contains(" passed, 0 failed"), "\(text.suffix(4000))")
        #expect(serve.isRunning, "serve stayed up")
    }
}
