/**
 * Parsers for the CLI's numeric options. Commander passes option values through as strings, and
 * `Number.parseInt` turns "abc" into NaN and "3x" into 3; these refuse both, so a typo is a usage error (exit 2)
 * whose sentence names the option instead of a NaN that fails later or a silently different number.
 */
import { InvalidArgumentError } from 'commander';

/** A whole number of at least `min` for `option`; commander prefixes the message with the option and the value. */
export function wholeNumber(option: string, min: number, example: number) {
  return (value: string): number => {
    const n = /^\s*\d+\s*$/.test(value) ? Number(value) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min) {
      throw new InvalidArgumentError(`${option} takes a whole number of at least ${min}, e.g. ${option} ${example}.`);
    }
    return n;
  };
}
