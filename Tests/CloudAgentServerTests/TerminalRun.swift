import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `cloud-agent ARGUMENTS` on a terminal: `script` gives the CLI a pty, what `type` writes to
/// script's stdin is typed there, and everything the CLI shows lands in a transcript file.
final class TerminalRun: @unchecked Sendable {
    let process = Process()
    let transcript: URL
    private let keyboard = Pipe()

    /// `command` is a shell line run by `script` (`"$CLI"` is the `cloud-agent` executable);
    /// `environment` adds to this process's, without its `CLOUD_AGENT_*` variables.
    init(_ command: String, environment: [String: String], transcript: URL) throws {
        self.transcript = transcript
        _ = FileManager.default.createFile(atPath: transcript.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/script")
        process.arguments = ["-qfec", command, "/dev/null"]
        process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CLOUD_AGENT_") }.merging(
            ["NO_COLOR": "1", "TERM": "dumb", "CLI": TestServer.buildProducts.appendingPathComponent("cloud-agent").path]
        ) { $1 }.merging(environment) { $1 }
        process.standardInput = keyboard
        process.standardOutput = try FileHandle(forWritingTo: transcript)
        process.standardError = process.standardOutput
        try process.run()
    }

    /// What the terminal shows so far.
    var screen: String { (try? String(contentsOf: transcript, encoding: .utf8)) ?? "" }
    var isRunning: Bool { process.isRunning }
    var terminationStatus: Int32 { process.terminationStatus }

    /// Types `line` and Return.
    func type(_ line: String) { keyboard.fileHandleForWriting.write(Data((line + "\n").utf8)) }

    /// SIGKILL if it is still running (no process outlives its test).
    func stop() { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
}
