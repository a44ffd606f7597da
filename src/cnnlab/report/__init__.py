"""Pictures and the HTML report, made from arrays and from what runs wrote to disk."""
