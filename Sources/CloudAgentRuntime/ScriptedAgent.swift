import CloudAgentJSON
import Foundation
import Subprocess
import SystemPackage

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The built-in `scripted` agent: a real agent program for offline use, demos and tests.
///
/// It reads its prompt line by line and acts on each, writing one JSON object per line:
/// - `say TEXT` → `{"type":"text","text":TEXT}`
/// - `sleep SECONDS` → nothing at all, for SECONDS (fractional allowed)
/// - `tick N SECONDS` → N × `{"type":"text","text":"tick i/N"}`, SECONDS apart
/// - `write PATH TEXT` → TEXT and a newline into PATH inside the workspace (parents created) →
///   `{"type":"tool","name":"write","input":PATH,"status":"ok","output":"wrote N bytes"}`; a path
///   that escapes the workspace → `{"type":"error","message":"write: path escapes the workspace: PATH"}`
/// - `run COMMAND` → `/bin/sh -c COMMAND` in the workspace → `{"type":"tool","name":"run",
///   "input":COMMAND,"exitCode":N,"status":"ok"|"error","output":<last 4000 characters>}`
/// - `exit CODE` → stop at once with that exit code
/// - a blank line is skipped; any other line is echoed as a text event.
/// Bad arguments give an error event and the script goes on. At the end it exits 0.
public struct ScriptedAgent: Sendable {
    /// One line of the agent's output.
    public enum Event: Sendable, Equatable {
        case text(String)
        case tool(name: String, input: String, status: String, output: String, exitCode: Int32?)
        case error(String)

        /// The JSON object, `type` first.
        public var jsonLine: String {
            switch self {
            case .text(let text):
                return #"{"type":"text","text":\#(JSONText.encode(.string(text)))}"#
            case .error(let message):
                return #"{"type":"error","message":\#(JSONText.encode(.string(message)))}"#
            case .tool(let name, let input, let status, let output, let exitCode):
                var fields = [#""type":"tool""#, #""name":\#(JSONText.encode(.string(name)))"#, #""input":\#(JSONText.encode(.string(input)))"#]
                if let exitCode { fields.append(#""exitCode":\#(exitCode)"#) }
                fields.append(#""status":\#(JSONText.encode(.string(status)))"#)
                fields.append(#""output":\#(JSONText.encode(.string(output)))"#)
                return "{" + fields.joined(separator: ",") + "}"
            }
        }
    }

    /// The longest `run` output kept, in characters (the end of it).
    public static let runOutputLimit = 4000

    /// The agent's working directory, which `write` may not leave.
    public var workspace: String
    /// Writes one output line (flushed at once).
    public var emit: @Sendable (Event) -> Void

    public init(workspace: String, emit: @escaping @Sendable (Event) -> Void) {
        self.workspace = workspace
        self.emit = emit
    }

    /// Runs the script; returns the exit code (0, or the code of an `exit` line).
    public func run(prompt: String) async -> Int32 {
        // "\r\n" is one Character, so it is a separator of its own.
        for rawLine in prompt.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            let line = String(rawLine)
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            let verb = String(trimmed.prefix { !$0.isWhitespace })
            let rest = String(trimmed.dropFirst(verb.count).drop { $0.isWhitespace })
            switch verb {
            case "say":
                emit(.text(rest))
            case "sleep":
                guard let seconds = Self.seconds(rest) else {
                    emit(.error("sleep: SECONDS must be a non-negative number: \(rest)"))
                    continue
                }
                try? await Task.sleep(for: .seconds(seconds))
            case "tick":
                await tick(rest)
            case "write":
                write(rest)
            case "run":
                await runCommand(rest)
            case "exit":
                guard let code = Int32(rest), (0...255).contains(code) else {
                    emit(.error("exit: CODE must be a whole number from 0 to 255: \(rest)"))
                    continue
                }
                return code
            default:
                emit(.text(line))
            }
        }
        return 0
    }

    /// A non-negative number of seconds (at most 10⁹, so that a `Duration` holds it).
    private static func seconds(_ text: String) -> Double? {
        guard let seconds = Double(text), seconds >= 0, seconds <= 1e9 else { return nil }
        return seconds
    }

    private func tick(_ arguments: String) async {
        let parts = arguments.split(whereSeparator: \.isWhitespace)
        guard parts.count == 2, let count = Int(parts[0]), count >= 0, let seconds = Self.seconds(String(parts[1])) else {
            emit(.error("tick: expected N SECONDS (a whole number and a non-negative number): \(arguments)"))
            return
        }
        guard count > 0 else { return }
        for index in 1...count {
            if index > 1 { try? await Task.sleep(for: .seconds(seconds)) }
            emit(.text("tick \(index)/\(count)"))
        }
    }

    private func write(_ arguments: String) {
        let path = String(arguments.prefix { !$0.isWhitespace })
        guard !path.isEmpty else {
            emit(.error("write: expected PATH TEXT"))
            return
        }
        let text = String(arguments.dropFirst(path.count).drop { $0.isWhitespace })
        let target: String
        do {
            target = try WorkspacePath.resolve(path, in: workspace)
        } catch WorkspacePath.Failure.escapes {
            emit(.error("write: path escapes the workspace: \(path)"))
            return
        } catch {
            emit(.error("write: \(path): \(error)"))
            return
        }
        let contents = Data((text + "\n").utf8)
        do {
            let parent = (target as NSString).deletingLastPathComponent
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
            try contents.write(to: URL(fileURLWithPath: target))
        } catch {
            emit(.error("write: \(path): \(error.localizedDescription)"))
            return
        }
        emit(.tool(name: "write", input: path, status: "ok", output: "wrote \(contents.count) bytes", exitCode: nil))
    }

    private func runCommand(_ command: String) async {
        guard !command.isEmpty else {
            emit(.error("run: expected COMMAND"))
            return
        }
        do {
            let result = try await Subprocess.run(
                .path("/bin/sh"),
                arguments: ["-c", command],
                workingDirectory: FilePath(workspace),
                input: .none,
                output: .sequence,
                error: .combinedWithOutput
            ) { execution in
                // Keep only the end: enough bytes for `runOutputLimit` characters of any width.
                var tail: [UInt8] = []
                let keep = Self.runOutputLimit * 8
                do {
                    for try await buffer in execution.standardOutput {
                        tail.append(contentsOf: buffer.withUnsafeBytes { Array($0) })
                        if tail.count > 2 * keep { tail.removeFirst(tail.count - keep) }
                    }
                } catch {
                    // Output that cannot be read further: report what arrived.
                }
                return tail
            }
            let exitCode: Int32
            switch result.terminationStatus {
            case .exited(let code): exitCode = code
            case .signaled(let signal): exitCode = 128 + signal
            }
            let output = String(String(decoding: result.closureResult, as: UTF8.self).suffix(Self.runOutputLimit))
            emit(.tool(name: "run", input: command, status: exitCode == 0 ? "ok" : "error", output: output, exitCode: exitCode))
        } catch {
            emit(.error("run: could not start /bin/sh: \(error)"))
        }
    }

    /// Writes events to this process's stdout, one line per `write(2)`, so each line leaves
    /// the process as soon as it is made.
    public static func standardOutputEmitter() -> @Sendable (Event) -> Void {
        { event in writeToStandardOutput(Array((event.jsonLine + "\n").utf8)) }
    }
}

private func writeToStandardOutput(_ bytes: [UInt8]) {
    var written = 0
    while written < bytes.count {
        let result = bytes[written...].withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
        if result < 0 {
            if errno == EINTR { continue }
            return
        }
        written += result
    }
}

/// Where a path given to the scripted agent's `write` lands, resolved the way the kernel would
/// (`..` and every symbolic link on the way followed), and refused if that is outside the
/// workspace.
enum WorkspacePath {
    enum Failure: Error, CustomStringConvertible {
        case escapes
        case notAFile
        case tooManyLinks

        var description: String {
            switch self {
            case .escapes: "path escapes the workspace"
            case .notAFile: "not a file path"
            case .tooManyLinks: "too many levels of symbolic links"
            }
        }
    }

    /// The physical path to write `path` (relative to the workspace, or absolute) to.
    static func resolve(_ path: String, in workspace: String) throws(Failure) -> String {
        let root = realPath(workspace) ?? workspace
        let resolved = try physicalPath(path, from: root, linksLeft: 40)
        guard resolved.hasPrefix(root == "/" ? "/" : root + "/"), resolved != root else {
            throw resolved == root ? Failure.notAFile : Failure.escapes
        }
        if path.hasSuffix("/") { throw Failure.notAFile }
        return resolved
    }

    private static func physicalPath(_ path: String, from base: String, linksLeft: Int) throws(Failure) -> String {
        guard linksLeft > 0 else { throw Failure.tooManyLinks }
        var current = path.hasPrefix("/") ? "/" : base
        var onDisk = true
        let components = path.split(separator: "/").map(String.init)
        for (index, component) in components.enumerated() {
            switch component {
            case ".":
                continue
            case "..":
                current = (current as NSString).deletingLastPathComponent
                if current.isEmpty { current = "/" }
                continue
            default:
                break
            }
            let candidate = current == "/" ? "/" + component : current + "/" + component
            guard onDisk else {
                current = candidate
                continue
            }
            var info = stat()
            if lstat(candidate, &info) != 0 {
                onDisk = false
                current = candidate
            } else if info.st_mode & S_IFMT == S_IFLNK {
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: candidate)) ?? ""
                let remaining = components[(index + 1)...].joined(separator: "/")
                let followed = target.hasPrefix("/") ? target : (current == "/" ? "/" : current + "/") + target
                return try physicalPath(remaining.isEmpty ? followed : followed + "/" + remaining, from: "/", linksLeft: linksLeft - 1)
            } else {
                current = candidate
            }
        }
        return current
    }

    private static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
