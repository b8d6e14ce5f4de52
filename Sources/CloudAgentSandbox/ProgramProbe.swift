import Foundation

/// Asks a program about itself (`claude --version`), with a time limit, outside any sandbox.
public enum ProgramProbe {
    /// The first non-empty line the command prints when it exits 0 within `timeout`, else nil.
    public static func firstLine(of argv: [String], environment: [String: String], timeout: Duration = .seconds(10)) async -> String? {
        let outcome = await CommandRunner.run(argv, environment: environment, workingDirectory: nil, timeout: timeout)
        guard outcome.succeeded else { return nil }
        return outcome.output.text(redacting: [], note: nil)
            .split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .first { !$0.isEmpty }
    }
}
